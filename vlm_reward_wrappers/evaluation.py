"""Scoring policies on an env's true reward: what a learned reward is judged by.

Used by ``vlm-reward train`` (the random-action floor it prints) and by the benchmark harness in
``benchmarks/``.
"""

from __future__ import annotations

from typing import Callable

import gymnasium as gym
import numpy as np


def policy_score(act: Callable, env: gym.Env, episodes: int, metric: str, seed: int) -> float:
    """Mean true return, or success rate, of ``act(obs) -> action`` over ``episodes`` seeded episodes."""
    scores = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        total, success, done = 0.0, False, False
        while not done:
            obs, reward, terminated, truncated, info = env.step(act(obs))
            total += float(reward)
            success = success or bool(info.get("success", False))
            done = terminated or truncated
        scores.append(float(success) if metric == "success" else total)
    return float(np.mean(scores))


def random_score(env_id: str, episodes: int, metric: str = "return", seed: int = 10_000) -> float:
    """Score of uniformly random actions: the floor a learned reward must beat, and the zero of the
    normalised scores."""
    env = gym.make(env_id)
    env.action_space.seed(seed)
    score = policy_score(lambda obs: env.action_space.sample(), env, episodes, metric, seed=seed)
    env.close()
    return score
