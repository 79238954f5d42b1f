"""Scoring policies on an env's true reward: what a learned reward is judged by.

Used by ``vlm-reward train`` (the random-action floor it prints) and by the benchmark harness in
``benchmarks/``.
"""

from __future__ import annotations

from typing import Callable, Dict

import gymnasium as gym
import numpy as np


def policy_scores(act: Callable, env: gym.Env, episodes: int, seed: int) -> Dict[str, float]:
    """Mean true return (``"return"``) and, where the env reports ``info["success"]``, success rate
    (``"success"``: episodes in which it was ever true, MetaWorld's convention) of ``act(obs) -> action``
    over ``episodes`` seeded episodes."""
    returns, successes, reports_success = [], [], False
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        total, success, done = 0.0, False, False
        while not done:
            obs, reward, terminated, truncated, info = env.step(act(obs))
            total += float(reward)
            reports_success = reports_success or "success" in info
            success = success or bool(info.get("success", False))
            done = terminated or truncated
        returns.append(total)
        successes.append(float(success))
    scores = {"return": float(np.mean(returns))}
    if reports_success:
        scores["success"] = float(np.mean(successes))
    return scores


def policy_score(act: Callable, env: gym.Env, episodes: int, metric: str, seed: int) -> float:
    """Mean true return (``metric="return"``) or success rate (``"success"``) of ``act(obs) -> action``
    over ``episodes`` seeded episodes."""
    return policy_scores(act, env, episodes, seed).get(metric, 0.0)


def random_score(env_id: str, episodes: int, metric: str = "return", seed: int = 10_000) -> float:
    """Score of uniformly random actions: the floor a learned reward must beat, and the zero of the
    normalised scores."""
    env = gym.make(env_id)
    env.action_space.seed(seed)
    score = policy_score(lambda obs: env.action_space.sample(), env, episodes, metric, seed=seed)
    env.close()
    return score
