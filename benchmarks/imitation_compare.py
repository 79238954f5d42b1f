"""Side by side with the `imitation` library's preference comparisons (issue 5, item 5).

For each task (RL-VLM-F's CartPole, Pendulum-v1) and seed this trains PPO in each of these ways, with
the same hyperparameters, env steps and query schedule:

- true reward: PPO on the env's own reward (the ceiling);
- ours: VLMRewardWrapper + OracleLabeler, reward from frames (RL-VLM-F) and/or observations;
- imitation: PreferenceComparisons + SyntheticGatherer in its own venv (benchmarks/_imitation_side.py),
  comparing fragments of ``--fragment-lengths`` steps (1 = single transitions, like our single frames);

and random actions as the floor. Every run saves its policy every ``query_every`` steps; all policies
are then scored here, with the same code, env and seeded episodes, on the true reward. The report gives
return at equal queries (the end of training: same queries, same env steps) and at equal wall time (the
shortest preference run's training time), queries used and wall time, in
benchmarks/results/imitation_compare.{json,md} and one PNG per task.

What is matched and what is not is in FAIRNESS below, and in the report.

    python benchmarks/imitation_compare.py                    # smoke size: about 10 min on 2 cores
    python benchmarks/imitation_compare.py --size full        # 100k steps, 2000 queries, 3 seeds, more variants
    python benchmarks/imitation_compare.py --create-venv      # make .venv-imitation first if missing
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run by path, Python puts benchmarks/ on sys.path, not the repository
    sys.path.insert(0, str(REPO))

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402

import vlm_reward_wrappers  # noqa: E402,F401  (registers vlmrw/ ids)
from benchmarks.harness import SIZES, TaskConfig, machine_description, normalise, pyplot  # noqa: E402
from vlm_reward_wrappers.evaluation import policy_score, random_score  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
IMITATION_VENV = REPO / ".venv-imitation"
IMITATION_SIDE = REPO / "benchmarks" / "_imitation_side.py"
CONSTRAINTS = REPO / ".ci" / "constraints.txt"
#: The commands that make .venv-imitation (torch first and constrained: plain torch pulls CUDA).
VENV_COMMANDS = (
    f"python3 -m venv {IMITATION_VENV}",
    f"{IMITATION_VENV}/bin/pip install torch==2.13.0",
    f"{IMITATION_VENV}/bin/pip install -c {CONSTRAINTS} imitation==1.0.1",
)

#: What the comparison matches and what it cannot, written into the report.
FAIRNESS = """\
- Same on both sides: PPO and its hyperparameters, env steps, number of queries, pairs per batch, env steps
  between batches, the pool pairs are drawn from (the latest steps), the simulated teacher (rational: the
  higher true reward wins; or Boltzmann with the same beta), and for the reward model: an ensemble of 3,
  learning rate, batch size and epochs per update; imitation's MLP is shaped like our observation model
  (3 x 256, leaky ReLU, reading the state after the step).
- A query compares two single frames in ours (RL-VLM-F: a VLM compares images) and two fragments of
  `fragment_length` steps in imitation (sums of true rewards); 1-step fragments match ours, longer ones
  give each imitation query more information than a frame pair can hold.
- imitation's reward never reads frames (it would have to make them the policy's observations), so
  "ours, frames" against imitation also compares a CNN on 64 px frames with an MLP on the state.
- imitation gathers its first batch from extra rollouts of the untrained policy (counted in its env
  steps); ours takes it from the first episode of PPO's first rollout.
- Ties are soft 0.5 labels in imitation and dropped in ours; ours stops an update early at 97% train
  accuracy, imitation bags each member's data; imitation's members have no tanh on the output and are
  normalised with running statistics, ours standardises the ensemble mean over recent inputs.
- Ours renders every step (the labeler needs frames, whatever the reward model reads); imitation never
  renders. Both wall times are training only (setup and evaluation excluded).
"""

#: RL Baselines3 Zoo's PPO hyperparameters for Pendulum-v1 (run with one env, not its four); they also
#: learn RL-VLM-F's CartPole on the true reward in about 16k steps. Both libraries get exactly these.
PPO_KWARGS = dict(
    n_steps=1024, gae_lambda=0.95, gamma=0.9, n_epochs=10, ent_coef=0.0, learning_rate=1e-3, clip_range=0.2,
    use_sde=True, sde_sample_freq=4,
)
#: Reward-model settings shared by both sides: PreferenceLearner's defaults, and its MLP's layer widths.
REWARD_LR, REWARD_BATCH_SIZE, ENSEMBLE_SIZE, HIDDEN = 3e-4, 64, 3, (256, 256, 256)


def _task(env_id: str, smoke: Tuple[int, int, int], full: Tuple[int, int, int], epochs: int) -> TaskConfig:
    """A task whose sizes are (batches, env steps between batches, pairs per batch)."""
    sizes = {"smoke": smoke, "full": full}
    return TaskConfig(
        env_id, "PPO",
        steps={size: batches * every for size, (batches, every, _) in sizes.items()},
        learner={
            size: dict(query_every=every, pairs_per_query=pairs, feedback_budget=batches * pairs,
                       epochs_per_update=epochs)
            for size, (batches, every, pairs) in sizes.items()
        },
        eval_every={size: every for size, (_, every, _) in sizes.items()},
        eval_episodes=10, algo_kwargs=PPO_KWARGS,
    )


TASKS: Dict[str, TaskConfig] = {
    # RL-VLM-F's CartPole: continuous force, 100 steps, no early termination, true reward -|angle|.
    "cartpole-angle": _task("vlmrw/CartPoleAngle-v0", smoke=(6, 2048, 50), full=(25, 4096, 80), epochs=10),
    "pendulum": _task("Pendulum-v1", smoke=(8, 3072, 50), full=(25, 4096, 80), epochs=10),
}
DEFAULTS = {
    "smoke": dict(seeds=[0], reward_inputs=["frame"], fragment_lengths=[1]),
    "full": dict(seeds=[0, 1, 2], reward_inputs=["frame", "observation"], fragment_lengths=[1, 25]),
}


# --------------------------------------------------------------------------------------------- venv
def imitation_python() -> Path:
    """The interpreter of .venv-imitation (it may not exist)."""
    return IMITATION_VENV / "bin" / "python"


def missing_venv_message() -> str:
    """What to run to make .venv-imitation (or the flag that does it)."""
    return (
        f"{IMITATION_VENV} is missing: imitation 1.0.1 pins gymnasium~=0.29 and stable-baselines3~=2.2.1, so it "
        "needs its own virtual environment. Create it with\n    " + "\n    ".join(VENV_COMMANDS)
        + "\nor run this script with --create-venv."
    )


def create_venv() -> None:
    """Make .venv-imitation with VENV_COMMANDS (about a minute where pip's find-links holds torch)."""
    for command in VENV_COMMANDS:
        print("+", command, flush=True)
        subprocess.run(command.split(), check=True)


# --------------------------------------------------------------------------------------------- runs
def schedule(task: str, size: str) -> Dict[str, int]:
    """The query schedule both sides follow: ``batches`` batches of ``pairs`` pairs, one every
    ``every`` env steps, over ``steps`` env steps; pairs come from the latest ``pool`` steps.

    The pool is one episode short of ``every`` so that imitation, which cuts fragments from finished
    episodes only, finds it without extra rollouts; ours takes its first batch after one episode.
    """
    config = TASKS[task]
    learner = config.learner[size]
    horizon = gym.spec(config.env_id).max_episode_steps
    every, pairs = learner["query_every"], learner["pairs_per_query"]
    batches = learner["feedback_budget"] // pairs
    if batches * every != config.steps[size] or every % config.algo_kwargs["n_steps"] or every <= horizon:
        raise ValueError(f"{task}/{size}: steps must be batches x query_every, a multiple of PPO's n_steps, "
                         "with query_every longer than an episode")
    return dict(steps=config.steps[size], every=every, pairs=pairs, batches=batches, horizon=horizon,
                pool=every - horizon, epochs=learner["epochs_per_update"])


class CheckpointCallback(BaseCallback):
    """Copies the policy's weights every ``every`` env steps, with the training wall time (s, since
    training started) and the queries sent so far (``queries()``)."""

    def __init__(self, every: int, queries: Callable[[], int]) -> None:
        super().__init__()
        self.every, self.queries = every, queries
        self.checkpoints: List[dict] = []
        self.policies: List[dict] = []
        self._started = 0.0

    def _on_training_start(self) -> None:
        self._started = time.perf_counter()
        self._save()

    def _on_step(self) -> bool:
        if self.num_timesteps % self.every == 0:
            self._save()
        return True

    def _save(self) -> None:
        wall_s = time.perf_counter() - self._started
        self.policies.append({k: v.detach().clone() for k, v in self.model.policy.state_dict().items()})
        self.checkpoints.append({"steps": self.num_timesteps, "wall_s": wall_s, "queries": self.queries()})


def train_here(
    task: str, size: str, seed: int, reward_input: Optional[str], beta: Optional[float]
) -> Tuple[dict, List[dict]]:
    """PPO in this process on the true reward (``reward_input`` None) or on ours with the oracle
    teacher; returns the run record and its policies' weights, one per checkpoint."""
    from vlm_reward_wrappers import OracleLabeler, VLMRewardWrapper
    from vlm_reward_wrappers.envs import goal_for

    torch.set_num_threads(1)
    config, plan = TASKS[task], schedule(task, size)
    env = gym.make(config.env_id, render_mode=None if reward_input is None else "rgb_array")
    run = {"task": task, "env_id": config.env_id, "seed": seed, "fragment_length": None, "reward_input": reward_input}
    if reward_input is None:
        run.update(source="true", side="true reward")
    else:
        env = VLMRewardWrapper(
            env, goal=goal_for(config.env_id), labeler=OracleLabeler(beta=beta, seed=seed), reward_input=reward_input,
            seed=seed, asynchronous=False, seed_steps=plan["horizon"], buffer_capacity=plan["pool"],
            **config.learner[size],
        )
        run.update(source=f"ours-{reward_input}", side="ours")
    learner = getattr(env, "learner", None)
    callback = CheckpointCallback(plan["every"], lambda: 0 if learner is None else learner.queries_issued)
    model = PPO("MlpPolicy", env, seed=seed, verbose=0, **config.algo_kwargs)
    model.learn(plan["steps"], callback=callback)
    run.update(checkpoints=callback.checkpoints, env_steps=model.num_timesteps, queries=callback.checkpoints[-1]["queries"],
               wall_s=callback.checkpoints[-1]["wall_s"], reward_accuracy=None, ties=None)
    if learner is not None:
        run.update(reward_accuracy=learner.metrics["reward_model/accuracy"], ties=learner.metrics["no_preference"])
    env.close()
    return run, callback.policies


def imitation_config(task: str, size: str, seed: int, fragment_length: int, beta: Optional[float]) -> dict:
    """The settings _imitation_side.py reads: our schedule and reward-model settings in its terms."""
    plan = schedule(task, size)
    return dict(
        env_id=TASKS[task].env_id, seed=seed, steps_per_batch=plan["every"], batches=plan["batches"],
        pairs_per_batch=plan["pairs"], pool=plan["pool"], fragment_length=fragment_length,
        epochs_per_update=plan["epochs"], reward_lr=REWARD_LR, reward_batch_size=REWARD_BATCH_SIZE,
        ensemble_size=ENSEMBLE_SIZE, hidden=list(HIDDEN), beta=beta, ppo_kwargs=TASKS[task].algo_kwargs,
    )


def train_imitation(
    task: str, size: str, seed: int, fragment_length: int, beta: Optional[float], work: Path
) -> Tuple[dict, List[dict]]:
    """imitation's PreferenceComparisons in .venv-imitation; returns the run record and the policies'
    weights (an empty list, and the error in ``status``, if the subprocess failed)."""
    work.mkdir(parents=True, exist_ok=True)
    config_path = work / "config.json"
    config_path.write_text(json.dumps(imitation_config(task, size, seed, fragment_length, beta)))
    run = {"task": task, "env_id": TASKS[task].env_id, "seed": seed, "fragment_length": fragment_length,
           "reward_input": "observation", "source": f"imitation-L{fragment_length}", "side": "imitation"}
    with open(work / "log.txt", "w") as log:
        done = subprocess.run([str(imitation_python()), str(IMITATION_SIDE), str(config_path), str(work)],
                              stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        tail = (work / "log.txt").read_text().strip().splitlines()[-5:]
        run.update(status="failed: " + " | ".join(tail), checkpoints=[], queries=0, env_steps=0, wall_s=None,
                   reward_accuracy=None, ties=None)
        return run, []
    summary = json.loads((work / "summary.json").read_text())
    run.update({key: summary[key] for key in ("checkpoints", "queries", "env_steps", "wall_s", "reward_accuracy", "ties")})
    policies = [torch.load(work / f"{c['steps']}.pt", weights_only=True) for c in summary["checkpoints"]]
    return run, policies


def evaluate(run: dict, policies: Sequence[dict], episodes: int) -> None:
    """Score each checkpoint's policy on the true reward (deterministic actions, seeded episodes) into
    ``run["checkpoints"][i]["return"]``; add ``final`` and ``auc`` (mean over checkpoints)."""
    env = gym.make(run["env_id"])
    model = PPO("MlpPolicy", env, **TASKS[run["task"]].algo_kwargs)
    for checkpoint, weights in zip(run["checkpoints"], policies):
        model.policy.load_state_dict(weights)
        checkpoint["return"] = policy_score(lambda obs: model.predict(obs, deterministic=True)[0], env, episodes,
                                            "return", seed=10_000)
    env.close()
    returns = [c["return"] for c in run["checkpoints"]]
    run.update(final=returns[-1] if returns else None, auc=float(np.mean(returns)) if returns else None)
    run.setdefault("status", "ok")


# --------------------------------------------------------------------------------------------- report
def return_at_wall_time(checkpoints: Sequence[dict], wall_s: float) -> Optional[float]:
    """True return of the last policy saved within ``wall_s`` seconds of training (None if none was)."""
    within = [c["return"] for c in checkpoints if c["wall_s"] <= wall_s + 1e-9]
    return within[-1] if within else None


def add_equal_wall_time(runs: List[dict]) -> None:
    """Add ``equal_wall_s``, the shortest preference run's training time for its task and seed, and
    ``at_equal_wall``, each run's return with that much training time."""
    for task, seed in {(r["task"], r["seed"]) for r in runs}:
        group = [r for r in runs if (r["task"], r["seed"]) == (task, seed)]
        times = [r["wall_s"] for r in group if r["side"] != "true reward" and r["status"] == "ok"]
        for r in group:
            r["equal_wall_s"] = min(times) if times else None
            r["at_equal_wall"] = (return_at_wall_time(r["checkpoints"], min(times))
                                  if times and r["status"] == "ok" else None)


def _fmt(value: Optional[float], spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def run_label(run: dict) -> str:
    """How a run is named in tables and legends."""
    if run["side"] == "true reward":
        return "true reward"
    if run["side"] == "ours":
        return f"ours, {run['reward_input']}s"
    return f"imitation, {run['fragment_length']}-step fragments"


def format_table(runs: Sequence[dict], random: Dict[str, float]) -> str:
    """The markdown results table, one row a run, and a line of random-action returns."""
    header = ["task", "run", "seed", "queries", "env steps", "wall s", "final return", "final (norm.)",
              "return at equal wall time", "equal wall time s", "RM train acc.", "status"]
    rows = [
        [r["task"], run_label(r), str(r["seed"]), str(r["queries"]), str(r["env_steps"]), _fmt(r["wall_s"], ".0f"),
         _fmt(r["final"]), _fmt(r.get("final_norm")), _fmt(r.get("at_equal_wall")), _fmt(r.get("equal_wall_s"), ".0f"),
         _fmt(r["reward_accuracy"]), r["status"]]
        for r in runs
    ]
    lines = ["| " + " | ".join(cells) + " |" for cells in [header, ["---"] * len(header), *rows]]
    lines += ["", "Random actions: " + ", ".join(f"{task} {score:.2f}" for task, score in random.items())]
    return "\n".join(lines)


def plot(task: str, runs: Sequence[dict], random: float, path: Path) -> None:
    """True return against queries (preference runs) and against training wall time (all runs)."""
    plt = pyplot()
    fig, (by_queries, by_time) = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    runs = [r for r in runs if r["checkpoints"]]
    # A colour a kind of run and a line style a seed, the same in both panels.
    kinds = list(dict.fromkeys(run_label(r) for r in runs if r["side"] != "true reward"))
    seeds = sorted({r["seed"] for r in runs})
    for r in runs:
        label = run_label(r)
        colour = "black" if r["side"] == "true reward" else f"C{kinds.index(label)}"
        style = dict(color=colour, linestyle=("-", "--", "-.", ":")[seeds.index(r["seed"]) % 4])
        returns = [c["return"] for c in r["checkpoints"]]
        by_time.plot([c["wall_s"] for c in r["checkpoints"]], returns, marker="o", markersize=3,
                     label=f"{label} (seed {r['seed']})", **style)
        if r["side"] == "true reward":
            # It has no queries: its final return is a line across the queries panel.
            by_queries.axhline(r["final"], linewidth=1, **style)
        else:
            by_queries.plot([c["queries"] for c in r["checkpoints"]], returns, marker="o", markersize=3, **style)
    for ax in (by_queries, by_time):
        ax.axhline(random, color="grey", linestyle=":", label="random actions")
    by_queries.set_xlabel("queries (pairs labelled)")
    by_time.set_xlabel("training wall time (s)")
    by_queries.set_ylabel("true return (black: true-reward agent's final)")
    by_time.legend(fontsize=7)
    fig.suptitle(f"{task}: PPO, same steps and queries")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_results(runs: List[dict], random: Dict[str, float], settings: dict, out: Path) -> None:
    """imitation_compare.json, imitation_compare.md and imitation_compare_<task>.png under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "imitation_compare.json").write_text(json.dumps({**settings, "random": random, "runs": runs}, indent=1))
    budgets = [
        f"- {task}: {p['steps']} env steps, {p['batches']} batches of {p['pairs']} pairs every {p['every']} steps "
        f"({p['batches'] * p['pairs']} queries), pairs from the latest {p['pool']} steps, {p['epochs']} reward "
        f"epochs an update; PPO {settings['ppo_kwargs'][task]}"
        for task, p in settings["schedules"].items()
    ]
    loads = [r["load_after"] for r in runs]
    figures = [f"![{task}](imitation_compare_{task}.png)" for task in random]
    text = [
        "# Ours vs imitation's preference comparisons",
        "",
        f"Machine: {settings['machine']}; load average (1 min) {settings['load_before']:.1f} before, "
        f"{min(loads):.1f} to {max(loads):.1f} after each run; size {settings['size']}; teacher {settings['teacher']}.",
        "Both sides train PPO with the same hyperparameters (one env) for the same env steps with the "
        "same number of queries; every saved policy is scored here on the true reward over the same "
        f"{settings['eval_episodes']} seeded episodes. \"final\" is return at equal queries and env steps; "
        "\"return at equal wall time\" is each run's last policy saved within the shortest preference run's "
        "training time. Norm.: (return - random) / (true-reward run - random). RM train acc.: the reward "
        "model's preference accuracy on its own labels at the last update.",
        "",
        *budgets,
        "",
        format_table(runs, random),
        "",
        FAIRNESS,
        "",
        *figures,
        "",
    ]
    (out / "imitation_compare.md").write_text("\n".join(text))
    for task in random:
        plot(task, [r for r in runs if r["task"] == task], random[task], out / f"imitation_compare_{task}.png")


def compare(size: str, tasks: Sequence[str], seeds: Sequence[int], reward_inputs: Sequence[str],
            fragment_lengths: Sequence[int], beta: Optional[float], out: Path) -> List[dict]:
    """Run every task x seed x (true reward, ours per input, imitation per fragment length), score and
    write the report; returns the run records."""
    if not imitation_python().exists():
        raise SystemExit(missing_venv_message())
    load_before = os.getloadavg()[0]
    runs: List[dict] = []
    with tempfile.TemporaryDirectory(prefix="imitation_compare_") as work:
        for task in tasks:
            for seed in seeds:
                jobs = [("true", None), *(("ours", i) for i in reward_inputs), *(("imitation", n) for n in fragment_lengths)]
                for side, variant in jobs:
                    what = side if variant is None else f"{side} {variant}"
                    print(f"[{time.strftime('%H:%M:%S')}] {task} seed {seed}: {what}", flush=True)
                    if side == "imitation":
                        run, policies = train_imitation(task, size, seed, variant, beta, Path(work) / f"{task}-{seed}-{variant}")
                    else:
                        run, policies = train_here(task, size, seed, variant, beta)
                    evaluate(run, policies, TASKS[task].eval_episodes)
                    run["load_after"] = os.getloadavg()[0]
                    print(f"    final return {_fmt(run['final'])}, wall {_fmt(run['wall_s'], '.0f')} s, {run['status']}", flush=True)
                    runs.append(run)
    random = {t: random_score(TASKS[t].env_id, TASKS[t].eval_episodes) for t in tasks}
    normalise(runs, random)
    add_equal_wall_time(runs)
    settings = dict(
        size=size, machine=machine_description(), load_before=load_before,
        teacher="rational" if beta is None else f"Boltzmann, beta {beta}", eval_episodes=TASKS[tasks[0]].eval_episodes,
        ppo_kwargs={t: TASKS[t].algo_kwargs for t in tasks}, schedules={t: schedule(t, size) for t in tasks},
    )
    write_results(runs, random, settings, out)
    return runs


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=SIZES, default="smoke")
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=sorted(TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, help="default: 0 (smoke), 0 1 2 (full)")
    parser.add_argument("--reward-inputs", nargs="*", choices=["frame", "observation"],
                        help="what our reward model reads; default: frame (smoke), frame observation (full)")
    parser.add_argument("--fragment-lengths", nargs="*", type=int,
                        help="imitation's fragment lengths in steps; default: 1 (smoke), 1 25 (full)")
    parser.add_argument("--beta", type=float, help="Boltzmann teacher (both sides); default: rational")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--create-venv", action="store_true", help=f"create {IMITATION_VENV.name} if it is missing")
    args = parser.parse_args(argv)
    if args.create_venv and not imitation_python().exists():
        create_venv()
    defaults = DEFAULTS[args.size]
    compare(
        args.size, args.tasks, args.seeds or defaults["seeds"],
        defaults["reward_inputs"] if args.reward_inputs is None else args.reward_inputs,
        defaults["fragment_lengths"] if args.fragment_lengths is None else args.fragment_lengths,
        args.beta, args.out,
    )


if __name__ == "__main__":
    sys.exit(main())
