"""Goal strings for known tasks: RL-VLM-F's wording, so users and benchmarks query VLMs the same way."""

from __future__ import annotations

from typing import Dict

#: Env id -> goal, from RL-VLM-F's prompts.
TASK_GOALS: Dict[str, str] = {
    "CartPole-v1": "to balance the brown pole on the black cart to be upright",
    "vlmrw/CartPoleAngle-v0": "to balance the brown pole on the black cart to be upright",
    "Pendulum-v1": "to swing the pendulum up so it stands upright",
}


def goal_for(env_id: str) -> str:
    """The goal string registered for ``env_id``; a KeyError lists the known ids."""
    if env_id not in TASK_GOALS:
        raise KeyError(f"no goal registered for {env_id!r}: pass goal=... yourself (known: {sorted(TASK_GOALS)})")
    return TASK_GOALS[env_id]
