"""SAC on Pendulum-v1 from frames: the learned reward against the true one, over seeds, resumable.

Each run appends one JSON line to the results file as soon as it ends; a rerun skips the runs already
there, so the grid can be finished over several sittings. The true-reward run renders every step too
(and drops the frame), so wall times compare the same env work.

    python benchmarks/pendulum_sac.py                 # 3 seeds x 2 sources, about 25 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import List, Optional

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from stable_baselines3 import SAC  # noqa: E402
from stable_baselines3.common.evaluation import evaluate_policy  # noqa: E402

from vlm_reward_wrappers import OracleLabeler, RelabelingReplayBuffer, VLMRewardWrapper  # noqa: E402
from vlm_reward_wrappers.envs import goal_for  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "pendulum_sac"
#: 160 queries: 20 pairs every 1,000 steps after 1,000 seed steps, as the 15,000-step runs allow.
SCHEDULE = dict(config="quick", seed_steps=1000, query_every=1000, pairs_per_query=20, feedback_budget=160)


class Rendered(gym.Wrapper):
    """Renders every step, as the wrapper must, so the true-reward run does the same env work."""

    def step(self, action):
        out = self.env.step(action)
        self.env.render()
        return out


def run(source: str, seed: int, steps: int) -> dict:
    torch.set_num_threads(1)
    env = gym.make("Pendulum-v1", render_mode="rgb_array")
    if source == "true":
        env = Rendered(env)
    else:
        env = VLMRewardWrapper(env, goal=goal_for("Pendulum-v1"), labeler=OracleLabeler(seed=seed), seed=seed,
                               **SCHEDULE)
    kwargs = dict(replay_buffer_class=RelabelingReplayBuffer) if source != "true" else {}
    model = SAC("MlpPolicy", env, learning_starts=1000, seed=seed, verbose=0, **kwargs)
    started = time.perf_counter()
    model.learn(steps)
    wall_s = time.perf_counter() - started
    true_return, _ = evaluate_policy(model, gym.make("Pendulum-v1"), n_eval_episodes=10)
    # The load average says whether the wall time was taken on free cores.
    result = {"source": source, "seed": seed, "steps": steps, "wall_s": wall_s, "true_return": float(true_return),
              "load_avg_5m": os.getloadavg()[1]}
    if source != "true":
        env.learner.flush(timeout=120)
        m = env.learner.metrics
        result.update(queries=m["queries_issued"], label_accuracy=m["label_accuracy"],
                      gt_correlation=m["reward_model/gt_correlation"], train_cpu_s=m["reward_model/train_cpu_s"])
    env.close()
    return result


def summary(results: List[dict]) -> str:
    lines = [f"SAC on Pendulum-v1, {results[0]['steps']} steps ({platform.machine()}, {os.cpu_count()} cores, "
             "torch 1 thread). Learned: frames, simulated teacher, 160 queries.", "",
             "| source | seeds | true return per seed | mean | wall s per seed | mean wall s |", "|---|---|---|---|---|---|"]
    for source in ("true", "oracle"):
        rows = sorted((r for r in results if r["source"] == source), key=lambda r: r["seed"])
        if rows:
            returns, walls = [r["true_return"] for r in rows], [r["wall_s"] for r in rows]
            lines.append(f"| {source} | {len(rows)} | {' / '.join(f'{x:.0f}' for x in returns)} | {np.mean(returns):.1f} "
                         f"| {' / '.join(f'{w:.0f}' for w in walls)} | {np.mean(walls):.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=15_000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    path = args.out.with_suffix(".jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    for seed in args.seeds:
        for source in ("true", "oracle"):
            if any(r["source"] == source and r["seed"] == seed and r["steps"] == args.steps for r in done):
                continue
            result = run(source, seed, args.steps)
            with open(path, "a") as f:  # at once: a session may end mid-grid
                f.write(json.dumps(result) + "\n")
            done.append(result)
            print(json.dumps(result), flush=True)
    text = summary([r for r in done if r["steps"] == args.steps])
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
