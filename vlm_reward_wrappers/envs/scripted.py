"""Scripted pick-and-place policies that solve the cloth and rope tasks, and MetaWorld's own by task name.

They show that each task is solvable and that its true reward measures the goal, make demonstration
frames, and give a reference score. Each is a generator of actions computed from the env's state just
before each step, so use it as ``for action in fold_cloth(env): env.step(action)``.
"""

from __future__ import annotations

from typing import Iterator

import gymnasium as gym
import numpy as np

from vlm_reward_wrappers.envs.pick_place import PickAndPlaceEnv
from vlm_reward_wrappers.envs.cloth import ClothFlattenEnv, ClothFoldEnv
from vlm_reward_wrappers.envs.rope import RopeStraightenEnv


def _pick_place(env: PickAndPlaceEnv, pick: np.ndarray, place: np.ndarray) -> np.ndarray:
    """The (4,) action that picks at ``pick`` and places at ``place`` (x, y in m)."""
    return (np.concatenate([pick, place]) / env.workspace).astype(np.float32)


def fold_cloth(env: gym.Env) -> Iterator[np.ndarray]:
    """One action: the top-left corner onto the bottom-right corner (ClothFold, one-step or multi-step)."""
    cloth: ClothFoldEnv = env.unwrapped
    points = cloth.points()
    bottom_right = points[(cloth.grid_size - 1) * cloth.grid_size, :2]
    if cloth.multi_step:
        yield _pick_place(cloth, points[cloth.held_corner, :2], bottom_right)
    else:
        yield (bottom_right / cloth.workspace).astype(np.float32)


def flatten_cloth(env: gym.Env) -> Iterator[np.ndarray]:
    """Four actions: each corner pulled out to where it would lie, from the cloth's centre, if it were flat."""
    cloth: ClothFlattenEnv = env.unwrapped
    flat = cloth.flat_grid()
    n = cloth.grid_size
    for corner in (0, n - 1, (n - 1) * n, n * n - 1):
        points = cloth.points()
        # 5% beyond the flat position, so the pull leaves the cloth taut rather than wrinkled.
        yield _pick_place(cloth, points[corner, :2], points.mean(axis=0)[:2] + 1.05 * flat[corner, :2])


def straighten_rope(env: gym.Env) -> Iterator[np.ndarray]:
    """Two actions: one end to where a straight rope through the ends' midpoint would start, then the other
    end a rope length away from it."""
    rope: RopeStraightenEnv = env.unwrapped
    points = rope.points()
    start, end = points[0, :2], points[-1, :2]
    direction = (end - start) / np.linalg.norm(end - start)
    yield _pick_place(rope, start, (start + end) / 2 - rope.length / 2 * direction)
    points = rope.points()
    yield _pick_place(rope, points[-1, :2], points[0, :2] + rope.length * direction)


def metaworld_policy(task: str):
    """MetaWorld's own scripted policy of ``task`` (e.g. "drawer-open": ``SawyerDrawerOpenV3Policy``); its
    ``get_action(obs)`` reads MetaWorld's (39,) observation."""
    from metaworld import policies

    return getattr(policies, "Sawyer" + "".join(part.capitalize() for part in task.split("-")) + "V3Policy")()
