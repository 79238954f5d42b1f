"""Wrapped vs unwrapped env steps per second on the same rendered env (the aim: 0.85 on CartPole-v1, 0.95 on MuJoCo).

The unwrapped baseline steps and renders every step, as the wrapper must; the wrapped run adds the
resize, the frame buffer, the reward model's forward pass and the learner's bookkeeping (no query is
due during the measurement, so labelling and training are not timed: they run in the background or
every few thousand steps). Unwrapped and wrapped runs alternate, and each row reports medians, because
a shared machine's load drifts from run to run. Results go to benchmarks/results/wrapper_overhead.{json,md}.

    python benchmarks/wrapper_overhead.py [--steps 2000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import List, Optional, Tuple

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # run by path, Python puts benchmarks/ on sys.path, not the repository
    sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402

import vlm_reward_wrappers  # noqa: E402,F401
from benchmarks.harness import current_commit  # noqa: E402
from vlm_reward_wrappers import FrameInfoWrapper, OracleLabeler, VLMRewardVecEnvWrapper, VLMRewardWrapper  # noqa: E402

RESULTS = HERE / "results"
NO_QUERY = dict(seed_steps=10**9)


def _rate_single(env: gym.Env, steps: int, render: bool) -> float:
    env.reset(seed=0)
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(steps)]
    started = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if render:
            env.render()
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - started)


def _rate_vec(venv, steps: int) -> float:
    venv.reset()
    actions = [np.stack([venv.action_space.sample() for _ in range(venv.num_envs)]) for _ in range(steps // venv.num_envs)]
    started = time.perf_counter()
    for action in actions:
        venv.step(action)
    return len(actions) * venv.num_envs / (time.perf_counter() - started)


#: What each ``buffer`` of :func:`single_env` stands for: the algorithms whose buffer scores the steps.
BUFFERS = {"replay": "SAC, TD3, DQN", "rollout": "PPO, A2C"}


def _medians(pairs: List[Tuple[float, float]]) -> Tuple[float, float, float]:
    """Median unwrapped and wrapped rates and the median of their ratios, over alternating runs (the load
    of a shared machine drifts between runs, less within a pair)."""
    return (statistics.median(p for p, _ in pairs), statistics.median(w for _, w in pairs),
            statistics.median(w / p for p, w in pairs))


def single_env(env_id: str, steps: int, repeats: int, reward_input: str, buffer: Optional[str] = None) -> dict:
    """``buffer``: None (the wrapper scores each step), or the kind of buffer that scores them
    ("replay": RelabelingReplayBuffer, "rollout": BatchScoringRolloutBuffer), claiming the steps as it does."""
    plain_env = gym.make(env_id, render_mode="rgb_array")
    wrapped_env = VLMRewardWrapper(gym.make(env_id, render_mode="rgb_array"), goal="the task", labeler=OracleLabeler(),
                                   reward_input=reward_input, seed=0, score_in_buffer=buffer is not None, **NO_QUERY)
    if buffer is not None:
        wrapped_env.deferred_rewards.claim(buffer)
    wrapped_env.reset(seed=0)
    for _ in range(2):  # the learner's frame buffer is made at its first step (a step late with a rollout buffer)
        wrapped_env.step(wrapped_env.action_space.sample())
    # A run's first pass through the frame buffer faults its fresh pages in (20-30 us a step on this
    # machine's VM, for the first buffer_capacity steps); later passes write touched pages (2 us). Rows
    # measure the steady state.
    wrapped_env.learner.buffer.frames.fill(0)
    pairs = []
    for _ in range(repeats):
        pairs.append((_rate_single(plain_env, steps, render=True), _rate_single(wrapped_env, steps, render=False)))
        if buffer == "rollout":
            wrapped_env.deferred_rewards.clear()  # as a rollout buffer takes its steps
    wrapped_env.close()
    plain_env.close()
    plain, wrapped, ratio = _medians(pairs)
    parts = {part: 1000 * seconds / (steps * repeats) for part, seconds in wrapped_env.learner.cost.seconds.items()}
    scoring = f"scored in the {buffer} buffer ({BUFFERS[buffer]})" if buffer else f"reward from {reward_input}"
    return {"setting": f"{env_id}, 1 env, {scoring}", "steps": steps, "repeats": repeats, "unwrapped_sps": plain,
            "wrapped_sps": wrapped, "ratio": ratio, "ms_per_step": parts}


def vec_env(env_id: str, steps: int, repeats: int, n_envs: int) -> dict:
    def make(wrapper_class=None):
        return make_vec_env(env_id, n_envs=n_envs, seed=0, env_kwargs={"render_mode": "rgb_array"},
                            wrapper_class=wrapper_class)

    def plain_rate() -> float:
        # The baseline renders every env every step, as FrameInfoWrapper does.
        started = time.perf_counter()
        plain_venv.reset()
        for _ in range(steps // n_envs):
            plain_venv.step(np.stack([plain_venv.action_space.sample() for _ in range(n_envs)]))
            plain_venv.get_images()
        return (steps // n_envs) * n_envs / (time.perf_counter() - started)

    plain_venv = make()
    wrapped_venv = VLMRewardVecEnvWrapper(make(FrameInfoWrapper), goal="the task", labeler=OracleLabeler(), seed=0,
                                          **NO_QUERY)
    pairs = [(plain_rate(), _rate_vec(wrapped_venv, steps)) for _ in range(repeats)]
    wrapped_venv.close()
    plain_venv.close()
    plain, wrapped, ratio = _medians(pairs)
    return {"setting": f"{env_id}, DummyVecEnv x{n_envs}, reward from frame", "steps": steps, "repeats": repeats,
            "unwrapped_sps": plain, "wrapped_sps": wrapped, "ratio": ratio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5, help="alternating unwrapped and wrapped runs per row")
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps, repeats = args.steps, args.repeats
    # MuJoCo tasks step and render slower, so fewer steps measure them as well.
    rows = [
        single_env("CartPole-v1", steps, repeats, "frame"),
        single_env("CartPole-v1", steps, repeats, "frame", buffer="replay"),
        single_env("CartPole-v1", steps, repeats, "frame", buffer="rollout"),
        single_env("vlmrw/CartPoleAngle-v0", steps, repeats, "frame"),
        single_env("vlmrw/CartPoleAngle-v0", steps, repeats, "observation"),
        single_env("Pendulum-v1", steps, repeats, "frame"),
        vec_env("vlmrw/CartPoleAngle-v0", steps, repeats, 8),
        vec_env("Pendulum-v1", steps, repeats, 8),
        single_env("vlmrw/MetaWorld-drawer-open-v0", steps // 4, repeats, "frame"),
        single_env("vlmrw/RopeStraighten-v0", max(10, steps // 100), repeats, "frame"),
    ]
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (load {os.getloadavg()[0]:.1f} "
               f"at the end), torch {torch.__version__}, 1 thread, commit {current_commit()}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "wrapper_overhead.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    lines = [f"Wrapped vs unwrapped steps/s, same rendered env, medians of {repeats} alternating runs ({machine}).", "",
             "| setting | steps | unwrapped steps/s | wrapped steps/s | ratio | wrapped ms a step: render / frame prep / "
             "scoring / learner |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['setting']} | {r['steps']} | {r['unwrapped_sps']:.1f} | {r['wrapped_sps']:.1f} | {r['ratio']:.2f} | "
              + (" / ".join(f"{r['ms_per_step'][part]:.2f}" for part in ("render", "frame_prep", "scoring", "learner"))
                 if "ms_per_step" in r else "in the workers") + " |"
              for r in rows]
    (RESULTS / "wrapper_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
