"""Speed of the cloth, rope and MetaWorld tasks on the CPU: simulation steps/s and rendered frames/s.

For each task: env steps/s with random actions and no rendering, resets included (a cloth or rope step
is a whole pick-and-place, hundreds of physics steps), physics steps/s (MuJoCo ``mj_step`` calls), frames/s of
``render()`` at 64, 128, 224 and 360 px (the cloth and rope default), and the score of a scripted policy against random actions (the true
reward's normalized performance; MetaWorld: success rate). Also saves one picture per task (start | end of
the scripted run, 256 px) for the README. Results go to benchmarks/results/env_speed.{json,md} and *.png.

    python benchmarks/env_speed.py [--seconds 3] [--seeds 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import gymnasium as gym
import numpy as np
from PIL import Image

import vlm_reward_wrappers  # noqa: F401  (registers the vlmrw/ ids)
from vlm_reward_wrappers.envs.mujoco_setup import import_mujoco, select_mujoco_gl
from vlm_reward_wrappers.envs.scripted import flatten_cloth, fold_cloth, metaworld_policy, straighten_rope

RESULTS = Path(__file__).parent / "results"
SIZES = (64, 128, 224, 360)
Script = Callable[[gym.Env], Iterator[np.ndarray]]

#: (label, env id, make kwargs, scripted policy (a MetaWorld task name: MetaWorld's own), picture or None)
TASKS: List[Tuple[str, str, Dict[str, Any], Union[Script, str], Optional[str]]] = [
    ("ClothFold-v0 (11x11)", "vlmrw/ClothFold-v0", {}, fold_cloth, "cloth_fold.png"),
    ("ClothFold-v0, grid_size=9", "vlmrw/ClothFold-v0", {"grid_size": 9}, fold_cloth, None),
    ("ClothFold-v0, grid_size=15", "vlmrw/ClothFold-v0", {"grid_size": 15}, fold_cloth, None),
    ("ClothFoldMultiStep-v0", "vlmrw/ClothFoldMultiStep-v0", {}, fold_cloth, None),
    ("ClothFlatten-v0", "vlmrw/ClothFlatten-v0", {}, flatten_cloth, "cloth_flatten.png"),
    ("RopeStraighten-v0", "vlmrw/RopeStraighten-v0", {}, straighten_rope, "rope_straighten.png"),
] + [
    (f"MetaWorld-{task}-v0", f"vlmrw/MetaWorld-{task}-v0", {}, task, f"metaworld_{task.replace('-', '_')}.png")
    for task in ("sweep-into", "drawer-open", "soccer")
]


def physics(env: gym.Env) -> Tuple[Any, Any]:
    """The MuJoCo model and data an env steps."""
    unwrapped = env.unwrapped
    inner = getattr(unwrapped, "metaworld_env", None)
    return (inner.unwrapped.model, inner.unwrapped.data) if inner is not None else (unwrapped.model, unwrapped.data)


def step_rates(env_id: str, kwargs: dict, seconds: float) -> Tuple[float, float]:
    """Env steps/s with random actions and no rendering, resets included (as training pays them), and
    physics steps/s within steps."""
    env = gym.make(env_id, **kwargs)
    model, data = physics(env)
    env.reset(seed=0)
    env.action_space.seed(0)
    steps, physics_steps, in_steps = 0, 0, 0.0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        action, before, step_started = env.action_space.sample(), data.time, time.perf_counter()
        _, _, terminated, truncated, _ = env.step(action)
        in_steps += time.perf_counter() - step_started
        physics_steps += int(round((data.time - before) / model.opt.timestep))
        steps += 1
        if terminated or truncated:
            env.reset()
    rate = steps / (time.perf_counter() - started)
    env.close()
    return rate, physics_steps / in_steps


def frame_rate(env_id: str, kwargs: dict, size: int, seconds: float) -> float:
    """render() calls/s at ``size`` px, the scene unchanged between calls."""
    env = gym.make(env_id, render_mode="rgb_array", render_size=size, **kwargs)
    env.reset(seed=0)
    env.render()  # the first call creates the GL context
    frames, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        env.render()
        frames += 1
    rate = frames / (time.perf_counter() - started)
    env.close()
    return rate


def run_scripted(env: gym.Env, seed: int, script: Union[Script, str]) -> Tuple[float, int]:
    """Score of the scripted policy from a seeded reset (normalized performance; for a MetaWorld task name,
    whether MetaWorld's own policy succeeds within the episode) and the number of actions it took."""
    obs, info = env.reset(seed=seed)
    if isinstance(script, str):
        policy = metaworld_policy(script)
        for step in range(1, 501):
            obs, _, terminated, truncated, info = env.step(policy.get_action(obs))
            if info["success"] or terminated or truncated:
                return float(info["success"]), step
    step = 0
    for step, action in enumerate(script(env), start=1):
        info = env.step(action)[4]
    return info["normalized_performance"], step


def run_random(env: gym.Env, seed: int, n_actions: int) -> float:
    """Score of ``n_actions`` random actions from a seeded reset (MetaWorld: success at any step)."""
    env.reset(seed=seed)
    env.action_space.seed(seed)
    succeeded = False
    for _ in range(n_actions):
        _, _, terminated, truncated, info = env.step(env.action_space.sample())
        succeeded |= bool(info["success"])
        if terminated or truncated:
            break
    return float(info.get("normalized_performance", succeeded))


def scripted_vs_random(env_id: str, kwargs: dict, script: Union[Script, str], seeds: int,
                       picture: Optional[str]) -> Dict[str, float]:
    """Mean scores of the scripted policy and of as many random actions (MetaWorld: a whole episode) over
    seeded resets; saves the picture of the first scripted run."""
    env = gym.make(env_id, render_mode="rgb_array", render_size=256, **kwargs)
    scripted, random = [], []
    for seed in range(seeds):
        if seed == 0 and picture:
            env.reset(seed=seed)
            start = env.render()
        value, n_actions = run_scripted(env, seed, script)
        scripted.append(value)
        if seed == 0 and picture:
            gap = np.full((start.shape[0], 4, 3), 255, dtype=np.uint8)
            Image.fromarray(np.concatenate([start, gap, env.render()], axis=1)).save(RESULTS / picture)
        random.append(run_random(env, seed, 500 if isinstance(script, str) else n_actions))
    env.close()
    return {"scripted": float(np.mean(scripted)), "random": float(np.mean(random))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per speed measurement")
    parser.add_argument("--seeds", type=int, default=8, help="seeded resets for scripted vs random (MetaWorld: 3)")
    args = parser.parse_args()
    backend = select_mujoco_gl()
    mujoco = import_mujoco()
    load = os.getloadavg()[0]
    RESULTS.mkdir(exist_ok=True)
    rows = []
    for label, env_id, kwargs, script, picture in TASKS:
        env_sps, physics_sps = step_rates(env_id, kwargs, args.seconds)
        fps = {size: frame_rate(env_id, kwargs, size, args.seconds / 2) for size in SIZES}
        seeds = min(args.seeds, 3) if isinstance(script, str) else args.seeds
        rows.append({"task": label, "env_id": env_id, "kwargs": kwargs, "env_steps_per_s": env_sps,
                     "physics_steps_per_s": physics_sps, "frames_per_s": fps,
                     **scripted_vs_random(env_id, kwargs, script, seeds, picture)})
        print(rows[-1], flush=True)
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (load {load:.1f} at start), "
               f"mujoco {mujoco.__version__}, MUJOCO_GL={backend}")
    (RESULTS / "env_speed.json").write_text(json.dumps({"machine": machine, "seconds": args.seconds,
                                                       "rows": rows}, indent=2))
    lines = [f"Task speed on the CPU ({machine}). Scores: normalized performance of the true reward (MetaWorld: "
             "success rate) after the scripted policy and after as many random actions, mean over seeded resets.",
             "", "| task | env steps/s | physics steps/s | " + " | ".join(f"frames/s {s} px" for s in SIZES)
             + " | render at 360 px, share of a step | scripted | random |", "|---" * (6 + len(SIZES)) + "|"]
    lines += [f"| {r['task']} | {r['env_steps_per_s']:.1f} | {r['physics_steps_per_s']:.0f} | "
              + " | ".join(f"{r['frames_per_s'][s]:.0f}" for s in SIZES)
              + f" | {100 * r['env_steps_per_s'] / r['frames_per_s'][360]:.1f}% | {r['scripted']:.2f} | {r['random']:.2f} |"
              for r in rows]
    (RESULTS / "env_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
