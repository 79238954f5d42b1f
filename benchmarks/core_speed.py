"""Does the env loop wait? PPO on RL-VLM-F's CartPole, SubprocVecEnv x4, learned reward vs true reward.

Each run renders in the workers (FrameInfoWrapper). The learned-reward runs use the simulated teacher,
20 pairs every 400 steps, and train the reward model either beside the env loop (the default) or inside
it (``asynchronous=False``, as PEBBLE and RL-VLM-F do), with RL-VLM-F's epochs or a bounded number of
gradient steps. Reported: wall time, its ratio to the true-reward run, env-step latency (p50 / p99, and
p99 of the steps taken while an update was training), training CPU seconds per 100 labels, label
accuracy, the learned reward's correlation with the true one, and the policy's true return.

    python benchmarks/core_speed.py            # about 5 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.evaluation import evaluate_policy  # noqa: E402
from stable_baselines3.common.vec_env import SubprocVecEnv, VecEnvWrapper  # noqa: E402

import gymnasium as gym  # noqa: E402
from vlm_reward_wrappers import FrameInfoWrapper, OracleLabeler, VLMRewardVecEnvWrapper  # noqa: E402
from vlm_reward_wrappers.envs import goal_for  # noqa: E402

ENV_ID = "vlmrw/CartPoleAngle-v0"
RESULTS = Path(__file__).resolve().parent / "results"


class StepTimer(VecEnvWrapper):
    """Times every step of the VecEnv below (milliseconds), noting whether an update was training."""

    def __init__(self, venv, learner=None) -> None:
        super().__init__(venv)
        self.learner, self.step_ms, self.during_update = learner, [], []

    def reset(self):
        return self.venv.reset()

    def step_wait(self):
        started = time.perf_counter()
        out = self.venv.step_wait()
        self.step_ms.append(1000 * (time.perf_counter() - started))
        self.during_update.append(bool(self.learner is not None and self.learner.trainer.busy))
        return out


def run(mode: str, steps: int, seed: int) -> dict:
    torch.set_num_threads(1)
    venv = make_vec_env(ENV_ID, n_envs=4, seed=seed, vec_env_cls=SubprocVecEnv, wrapper_class=FrameInfoWrapper,
                        env_kwargs={"render_mode": "rgb_array"})
    learner = None
    if mode != "true":
        venv = VLMRewardVecEnvWrapper(
            venv, goal=goal_for(ENV_ID), labeler=OracleLabeler(seed=seed), seed=seed, seed_steps=400,
            query_every=400, pairs_per_query=20, feedback_budget=10_000, asynchronous=mode != "in-loop",
            gradient_steps_per_update=100 if mode == "bounded" else None,
        )
        learner = venv.learner
    else:
        venv = _DropFrames(venv)
    timer = StepTimer(venv, learner)
    model = PPO("MlpPolicy", timer, seed=seed, verbose=0)
    started = time.perf_counter()
    model.learn(steps)
    wall_s = time.perf_counter() - started
    eval_env = gym.make(ENV_ID)
    true_return, _ = evaluate_policy(model, eval_env, n_eval_episodes=10)
    step_ms = np.array(timer.step_ms)
    during = step_ms[np.array(timer.during_update, dtype=bool)]
    result = {
        "mode": mode, "steps": steps, "seed": seed, "wall_s": wall_s, "true_return": float(true_return),
        "step_ms_p50": float(np.percentile(step_ms, 50)), "step_ms_p99": float(np.percentile(step_ms, 99)),
        "step_ms_p99_during_update": float(np.percentile(during, 99)) if len(during) else None,
        "steps_during_update": int(len(during)),
    }
    if learner is not None:
        learner.flush(timeout=120)
        m = learner.metrics
        labels = max(1, m["labels_used"])
        result.update(labels_used=m["labels_used"], updates=m["reward_model/updates"],
                      label_accuracy=m["label_accuracy"], gt_correlation=m["reward_model/gt_correlation"],
                      train_cpu_s=m["reward_model/train_cpu_s"],
                      train_cpu_s_per_100_labels=100 * m["reward_model/train_cpu_s"] / labels)
    timer.close()
    return result


class _DropFrames(VecEnvWrapper):
    """The true-reward baseline: renders in the workers like the learned runs, and drops the frames."""

    def reset(self):
        return self.venv.reset()

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        for info in infos:
            info.pop("vlm_frame", None)
        return obs, rewards, dones, infos


def table(results: List[dict], machine: str) -> str:
    truth = {r["seed"]: r["wall_s"] for r in results if r["mode"] == "true"}

    def fmt(value, spec=".2f"):
        return "n/a" if value is None else format(value, spec)

    lines = [f"PPO on {ENV_ID}, SubprocVecEnv x4, rendering in the workers, 20 pairs every 400 steps ({machine}).", "",
             "| reward | training | wall s | x true | step ms p50 / p99 | p99 while training | train CPU s / 100 labels "
             "| labels | updates | label acc. | reward-true corr. | true return |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    names = {"true": ("true reward", "-"), "in-loop": ("learned", "in the env loop, 10 epochs"),
             "background": ("learned", "beside the loop, 10 epochs"),
             "bounded": ("learned", "beside the loop, 100 steps")}
    for r in results:
        reward, training = names[r["mode"]]
        lines.append(
            f"| {reward} | {training} | {r['wall_s']:.1f} | {r['wall_s'] / truth[r['seed']]:.2f} | "
            f"{r['step_ms_p50']:.2f} / {r['step_ms_p99']:.2f} | {fmt(r['step_ms_p99_during_update'])} | "
            f"{fmt(r.get('train_cpu_s_per_100_labels'))} | {r.get('labels_used', '-')} | {r.get('updates', '-')} | "
            f"{fmt(r.get('label_accuracy'))} | {fmt(r.get('gt_correlation'))} | {r['true_return']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", nargs="+", default=["true", "in-loop", "background", "bounded"])
    parser.add_argument("--out", type=Path, default=RESULTS / "core_speed")
    args = parser.parse_args(argv)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, 1 thread"
    results: List[Dict] = [run(mode, args.steps, args.seed) for mode in args.modes]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    text = table(results, machine)
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
