"""Offline RL on VLM-relabelled data: IQL (d3rlpy 2.8.0) on RL-VLM-F's CartPole with a sparse reward.

A behaviour policy (a weak balancing controller that takes a random action with a probability drawn
per episode from [0.3, 1]) records episodes of ``vlmrw/CartPoleAngle-v0`` with their frames. The
dataset's own reward is sparse: 1 at the last step if the pole ends within 0.2 rad of upright, else
0; the true reward -|angle| stays in the infos. The dataset goes through the package's real path
(Minari dataset -> relabel -> new Minari dataset) for each reward source:

- sparse: the dataset's reward as recorded; true dense: -|angle| (the reference);
- RG-VLM window scores (:class:`~vlm_reward_wrappers.offline.WindowScorer`) from the simulated teacher,
  exact ("oracle", 0.1 x score) or noisy (score noise 2 points, 20% of answers unreadable) and added to
  the sparse reward (RG-VLM's auxiliary use: sparse + 0.1 x score);
- RL-VLM-F preferences on the dataset's frames -> reward model
  (:class:`~vlm_reward_wrappers.offline.PreferenceRelabeler`), oracle and 10% mistakes;
- with ``--labeler llama|openai`` (and its model options), the same two methods from that VLM.

IQL trains on each version and is evaluated on the true task: return (sum of -|angle| over 100 steps,
0 is best) and success (upright at the end). Results: benchmarks/results/offline_iql.{json,md}.

    python benchmarks/offline_iql.py [--size small|tiny] [--seeds 0 1] [--labeler llama --model-path
        vlm.gguf --mmproj-path mmproj.gguf]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import vlm_reward_wrappers  # noqa: E402,F401  (registers vlmrw/ ids)
from vlm_reward_wrappers.cli import labeler_options, make_backend, make_labeler  # noqa: E402
from vlm_reward_wrappers.envs import goal_for  # noqa: E402
from vlm_reward_wrappers.labelers import ChatScoreLabeler, OracleLabeler, OracleScoreLabeler, ScoreLabeler  # noqa: E402
from vlm_reward_wrappers.label_store import LabelStore  # noqa: E402
from vlm_reward_wrappers.offline import (  # noqa: E402
    OfflineDataset,
    PreferenceRelabeler,
    WindowScorer,
    fill_unscored,
    mix_rewards,
    record_episodes,
    true_reward_correlation,
)

ENV_ID = "vlmrw/CartPoleAngle-v0"
RESULTS = Path(__file__).parent / "results"
UPRIGHT = 0.2  # rad from upright at the last step: the sparse reward's success
SCORE_WEIGHT = 0.1  # scores 0-10 -> rewards 0-1, the sparse reward's scale
ACTION_DESCRIPTION = "a horizontal force on the cart, from -1 (push left) to 1 (push right)"

#: episodes recorded, IQL gradient steps, evaluation episodes, preference queries and reward-model epochs.
SIZES = {
    "tiny": dict(episodes=4, iql_steps=50, eval_episodes=1, queries=40, epochs=2),
    "small": dict(episodes=100, iql_steps=2000, eval_episodes=10, queries=2000, epochs=30),
}


def controller(rng: np.random.Generator, random_rate: float) -> Callable[[np.ndarray], np.ndarray]:
    """A weak balancing controller (it keeps the pole up without noise) taking random actions at ``random_rate``."""

    def act(obs: np.ndarray) -> np.ndarray:
        x, x_dot, theta, theta_dot = obs
        force = 2.0 * theta + 0.5 * theta_dot + 0.1 * x + 0.2 * x_dot
        action = rng.uniform(-1, 1) if rng.random() < random_rate else np.clip(force, -1, 1)
        return np.array([action], dtype=np.float32)

    return act


def collect(n_episodes: int, seed: int) -> OfflineDataset:
    """Behaviour episodes with 64 px frames and the sparse reward; the true reward stays in the infos."""
    env = gym.make(ENV_ID, render_mode="rgb_array")
    rng = np.random.default_rng(seed)
    episodes = []
    for k in range(n_episodes):
        part = record_episodes(env, controller(rng, rng.uniform(0.3, 1.0)), 1, frame_size=64, seed=seed * 10_000 + k)
        episodes += part.episodes
    env.close()
    for episode in episodes:
        episode.rewards = np.zeros(len(episode))
        episode.rewards[-1] = float(abs(episode.observations[-1][2]) < UPRIGHT)
    return OfflineDataset(episodes, part.observation_space, part.action_space, part.env_spec)


def train_iql(dataset_id: str, n_steps: int, eval_episodes: int, seed: int) -> Dict[str, float]:
    """IQL on the Minari dataset ``dataset_id``; true return and success of its greedy policy."""
    import d3rlpy
    import minari
    import structlog
    from d3rlpy.logging import NoopAdapterFactory

    # d3rlpy logs every fit's settings and epochs through structlog: keep its warnings only.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    episodes = list(minari.load_dataset(dataset_id).iterate_episodes())
    data = d3rlpy.dataset.MDPDataset(
        observations=np.concatenate([e.observations[:-1] for e in episodes]),
        actions=np.concatenate([e.actions for e in episodes]),
        rewards=np.concatenate([e.rewards for e in episodes]).astype(np.float32),
        terminals=np.concatenate([e.terminations for e in episodes]).astype(np.float32),
        timeouts=np.concatenate([e.truncations for e in episodes]).astype(np.float32),
    )
    d3rlpy.seed(seed)
    iql = d3rlpy.algos.IQLConfig(observation_scaler=d3rlpy.preprocessing.StandardObservationScaler()).create(device="cpu")
    iql.fit(data, n_steps=n_steps, n_steps_per_epoch=n_steps, show_progress=False, save_interval=n_steps + 1,
            logger_adapter=NoopAdapterFactory(), experiment_name="offline_iql")
    env = gym.make(ENV_ID)
    returns, successes = [], []
    for episode in range(eval_episodes):
        obs, _ = env.reset(seed=10**6 + episode)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(iql.predict(obs[None])[0])
            total += reward
            done = terminated or truncated
        returns.append(total)
        successes.append(abs(obs[2]) < UPRIGHT)
    env.close()
    return {"true_return": float(np.mean(returns)), "true_return_std": float(np.std(returns)),
            "success": float(np.mean(successes))}


def relabellers(args: argparse.Namespace, size: dict, dataset: OfflineDataset, store: LabelStore, seed: int) -> Dict:
    """Source name -> (what it is, function returning (rewards per episode, VLM rewards, figures))."""
    goal = goal_for(ENV_ID)

    def scores(labeler: ScoreLabeler, add_sparse: bool):
        scorer = WindowScorer(labeler, goal, store, window_size=4)
        vlm = fill_unscored(scorer.score(dataset))
        return mix_rewards(dataset, vlm, SCORE_WEIGHT, add_sparse), vlm, scorer.metrics

    def preferences(make: Callable):
        # One member and lr 1e-3 (RL-VLM-F: 3 and 3e-4): at 3e-4 and 20-50 epochs the CNN reached 70% train
        # accuracy on these near-upright 64 px frames and a true-reward correlation of 0.44, at 1e-3 0.62.
        relabeler = PreferenceRelabeler(make(), goal, store, n_queries=size["queries"], reward_image_size=64,
                                        ensemble_size=1, epochs=size["epochs"], lr=1e-3, seed=seed)
        vlm = relabeler.relabel(dataset)
        return mix_rewards(dataset, vlm), vlm, relabeler.metrics

    gt_range = dataset.gt_reward_range
    sources = {
        "sparse": ("dataset reward (1 if upright at the end)",
                   lambda: ([e.rewards for e in dataset.episodes], None, {})),
        "true-dense": ("true reward (minus the absolute angle)", lambda: ([e.gt_rewards for e in dataset.episodes], None, {})),
        "score-oracle": ("RG-VLM scores, oracle teacher: 0.1 x score",
                         lambda: scores(OracleScoreLabeler(gt_range, seed=seed), False)),
        "score-noisy+sparse": ("RG-VLM scores, noisy teacher (noise 2, 20% unreadable): sparse + 0.1 x score",
                               lambda: scores(OracleScoreLabeler(gt_range, 2.0, 0.2, seed=seed), True)),
        "preference-oracle": ("RL-VLM-F preferences, oracle teacher -> reward model",
                              lambda: preferences(lambda: OracleLabeler(seed=seed))),
        "preference-mistake": ("RL-VLM-F preferences, 10% mistakes -> reward model",
                               lambda: preferences(lambda: OracleLabeler(mistake_rate=0.1, seed=seed))),
    }
    if args.labeler in ("llama", "openai"):
        sources["score-vlm+sparse"] = (
            f"RG-VLM scores from the {args.labeler} VLM: sparse + 0.1 x score",
            lambda: scores(ChatScoreLabeler(make_backend(args), ACTION_DESCRIPTION), True),
        )
        sources["preference-vlm"] = (f"RL-VLM-F preferences from the {args.labeler} VLM -> reward model",
                                     lambda: preferences(lambda: make_labeler(args)))
    return sources


def run(args: argparse.Namespace) -> Tuple[List[dict], List[dict]]:
    """(one row per seed and reward source, one description per seed's dataset)."""
    size = SIZES[args.size]
    rows, datasets = [], []
    with tempfile.TemporaryDirectory() as home:
        os.environ["MINARI_DATASETS_PATH"] = home  # benchmark datasets never land in ~/.minari
        for seed in args.seeds:
            started = time.perf_counter()
            recorded = collect(size["episodes"], seed)
            source_id = f"bench/cartpole-recorded-seed{seed}-v0"
            recorded.to_minari(source_id, [e.rewards for e in recorded.episodes], description="offline_iql benchmark")
            collect_s = time.perf_counter() - started
            datasets.append({
                "seed": seed, "steps": recorded.total_steps,
                "success": float(np.mean([e.rewards[-1] for e in recorded.episodes])),
                "return": float(np.mean([e.gt_rewards.sum() for e in recorded.episodes])),
            })
            dataset = OfflineDataset.from_minari(source_id)
            store = LabelStore(Path(home) / f"labels-seed{seed}.sqlite")
            for name, (what, relabel) in relabellers(args, size, dataset, store, seed).items():
                if args.sources and name not in args.sources:
                    continue
                started = time.perf_counter()
                rewards, vlm, figures = relabel()
                out_id = f"bench/cartpole-{name.replace('+', '-')}-seed{seed}-v0"
                dataset.to_minari(out_id, rewards, description=what)
                label_s = time.perf_counter() - started
                started = time.perf_counter()
                result = train_iql(out_id, size["iql_steps"], size["eval_episodes"], seed)
                rows.append({
                    "source": name, "what": what, "seed": seed, **result,
                    "reward_true_correlation": true_reward_correlation(dataset, rewards),
                    "vlm_reward_true_correlation": true_reward_correlation(dataset, vlm) if vlm else float("nan"),
                    "label_figures": figures, "label_s": label_s, "iql_s": time.perf_counter() - started,
                    "collect_s": collect_s,
                })
                print(f"{name:<20} return {result['true_return']:8.2f}  success {result['success']:.2f}  "
                      f"(label {label_s:.0f} s, IQL {rows[-1]['iql_s']:.0f} s)", flush=True)
            store.close()
    return rows, datasets


def table(rows: List[dict], args: argparse.Namespace, datasets: List[dict]) -> str:
    size = SIZES[args.size]
    lines = [
        f"IQL (d3rlpy 2.8.0, {size['iql_steps']} gradient steps) on {size['episodes']} behaviour episodes of "
        f"{ENV_ID} ({np.mean([d['steps'] for d in datasets]):.0f} transitions, "
        f"{np.mean([d['success'] for d in datasets]):.0%} ending upright, behaviour return "
        f"{np.mean([d['return'] for d in datasets]):.1f}), by reward source; evaluated on the true task over "
        f"{size['eval_episodes']} episodes x {len(args.seeds)} seed(s) (return: sum of -|angle| over 100 steps, 0 "
        f"is best; random actions score about -83; +- is the std over episodes, or over seeds' means). "
        f"CPU: {platform.machine()}, {os.cpu_count()} cores.",
        "",
        "| reward source | true return | success | reward vs true corr. | labeller figures | label s | IQL s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(row["source"] for row in rows):
        runs = [row for row in rows if row["source"] == name]
        returns = [row["true_return"] for row in runs]
        figures = runs[0]["label_figures"]
        if "windows" in figures:
            note = f"{figures['windows']} windows, {figures['unscored']} of {figures['transitions']} transitions unscored"
        elif "queries" in figures:
            note = f"{figures['labels_used']} preferences, accuracy {figures['label_accuracy']:.2f}"
        else:
            note = ""
        spread = np.std(returns) if len(runs) > 1 else runs[0]["true_return_std"]
        correlation = np.mean([row["reward_true_correlation"] for row in runs])
        lines.append(
            f"| {runs[0]['what']} | {np.mean(returns):.1f} +- {spread:.1f} | {np.mean([row['success'] for row in runs]):.2f}"
            f" | {correlation:.2f} | {note} | {np.mean([row['label_s'] for row in runs]):.0f}"
            f" | {np.mean([row['iql_s'] for row in runs]):.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, parents=[labeler_options()],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", choices=sorted(SIZES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--sources", nargs="+", default=None, help="only these reward sources (default: all)")
    parser.add_argument("--out", default=str(RESULTS), help="folder of offline_iql.json and offline_iql.md")
    args = parser.parse_args()
    args.seed = args.seeds[0]  # make_labeler's
    # Small networks on 2 cores: one thread is several times faster (docs/performance.md).
    torch.set_num_threads(1)
    started = time.perf_counter()
    rows, datasets = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "offline_iql.json").write_text(json.dumps(
        {"size": args.size, **SIZES[args.size], "seeds": args.seeds, "datasets": datasets, "rows": rows,
         "wall_s": time.perf_counter() - started, "cpu": platform.machine(), "cores": os.cpu_count()}, indent=1))
    (out / "offline_iql.md").write_text(table(rows, args, datasets))
    print((out / "offline_iql.md").read_text())


if __name__ == "__main__":
    main()
