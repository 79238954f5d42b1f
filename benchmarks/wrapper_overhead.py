"""Wrapped vs unwrapped env steps per second on the same rendered env (the aim: 0.85 on CartPole-v1, 0.95 on MuJoCo).

The unwrapped baseline steps and renders every step, as the wrapper must; the wrapped run adds the
resize, the frame buffer, the reward model's forward pass and the learner's bookkeeping (no query is
due during the measurement, so labelling and training are not timed: they run in the background or
every few thousand steps). Results go to benchmarks/results/wrapper_overhead.{json,md}.

    python benchmarks/wrapper_overhead.py [--steps 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

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


def single_env(env_id: str, steps: int, reward_input: str, score_in_buffer: bool = False) -> dict:
    plain = _rate_single(gym.make(env_id, render_mode="rgb_array"), steps, render=True)
    wrapped_env = VLMRewardWrapper(gym.make(env_id, render_mode="rgb_array"), goal="the task", labeler=OracleLabeler(),
                                   reward_input=reward_input, seed=0, score_in_buffer=score_in_buffer, **NO_QUERY)
    if score_in_buffer:
        wrapped_env.deferred_rewards.claim("replay")  # as RelabelingReplayBuffer does; it scores in batches
    wrapped = _rate_single(wrapped_env, steps, render=False)
    parts = {part: 1000 * seconds / steps for part, seconds in wrapped_env.learner.cost.seconds.items()}
    wrapped_env.close()
    scoring = "scored in the buffer" if score_in_buffer else f"reward from {reward_input}"
    return {"setting": f"{env_id}, 1 env, {scoring}", "steps": steps, "unwrapped_sps": plain,
            "wrapped_sps": wrapped, "ratio": wrapped / plain, "ms_per_step": parts}


def vec_env(env_id: str, steps: int, n_envs: int) -> dict:
    def make(wrapper_class=None):
        return make_vec_env(env_id, n_envs=n_envs, seed=0, env_kwargs={"render_mode": "rgb_array"},
                            wrapper_class=wrapper_class)

    plain_venv = make()
    # The baseline renders every env every step, as FrameInfoWrapper does.
    started = time.perf_counter()
    plain_venv.reset()
    for _ in range(steps // n_envs):
        plain_venv.step(np.stack([plain_venv.action_space.sample() for _ in range(n_envs)]))
        plain_venv.get_images()
    plain = (steps // n_envs) * n_envs / (time.perf_counter() - started)
    wrapped_venv = VLMRewardVecEnvWrapper(make(FrameInfoWrapper), goal="the task", labeler=OracleLabeler(), seed=0,
                                          **NO_QUERY)
    wrapped = _rate_vec(wrapped_venv, steps)
    wrapped_venv.close()
    return {"setting": f"{env_id}, DummyVecEnv x{n_envs}, reward from frame", "steps": steps, "unwrapped_sps": plain,
            "wrapped_sps": wrapped, "ratio": wrapped / plain}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    # MuJoCo tasks step and render slower, so fewer steps measure them as well.
    rows = [
        single_env("CartPole-v1", args.steps, "frame"),
        single_env("CartPole-v1", args.steps, "frame", score_in_buffer=True),
        single_env("vlmrw/CartPoleAngle-v0", args.steps, "frame"),
        single_env("vlmrw/CartPoleAngle-v0", args.steps, "observation"),
        single_env("Pendulum-v1", args.steps, "frame"),
        vec_env("vlmrw/CartPoleAngle-v0", args.steps, 8),
        vec_env("Pendulum-v1", args.steps, 8),
        single_env("vlmrw/MetaWorld-drawer-open-v0", args.steps // 4, "frame"),
        single_env("vlmrw/RopeStraighten-v0", max(10, args.steps // 100), "frame"),
    ]
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (load {os.getloadavg()[0]:.1f} "
               f"at the end), torch {torch.__version__}, 1 thread, commit {current_commit()}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "wrapper_overhead.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    lines = [f"Wrapped vs unwrapped steps/s, same rendered env ({machine}).", "",
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
