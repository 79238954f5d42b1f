"""Goal strings for known tasks: RL-VLM-F's wording, so users and benchmarks query VLMs the same way."""

from __future__ import annotations

from typing import Dict

_CLOTH_FOLD = "to fold the cloth diagonally from top left corner to bottom right corner"
_ROPE = "to straighten the blue rope"
_SWEEP_INTO = "to minimize the distance between the green cube and the hole"
_DRAWER_OPEN = "to open the drawer"
_SOCCER = "to move the soccer ball into the goal"
_PASS_WATER = (
    "to move the container, which holds water, to be as close to the red circle as possible without causing "
    "too many water droplets to spill"
)

#: Env id -> goal, from RL-VLM-F's prompts (ClothFlatten, which RL-VLM-F did not run, in the same style).
TASK_GOALS: Dict[str, str] = {
    "CartPole-v1": "to balance the brown pole on the black cart to be upright",
    "vlmrw/CartPoleAngle-v0": "to balance the brown pole on the black cart to be upright",
    "Pendulum-v1": "to swing the pendulum up so it stands upright",
    "vlmrw/ClothFold-v0": _CLOTH_FOLD,
    "vlmrw/ClothFoldMultiStep-v0": _CLOTH_FOLD,
    "vlmrw/ClothFlatten-v0": "to spread the cloth flat so that it covers as much of the table as possible",
    "vlmrw/RopeStraighten-v0": _ROPE,
    # MetaWorld: this package's ids and MetaWorld's own task names.
    "vlmrw/MetaWorld-sweep-into-v0": _SWEEP_INTO,
    "sweep-into-v3": _SWEEP_INTO,
    "vlmrw/MetaWorld-drawer-open-v0": _DRAWER_OPEN,
    "drawer-open-v3": _DRAWER_OPEN,
    "vlmrw/MetaWorld-drawer-close-v0": "to close the drawer",
    "drawer-close-v3": "to close the drawer",
    "vlmrw/MetaWorld-button-press-topdown-v0": "to press the button down",
    "button-press-topdown-v3": "to press the button down",
    "vlmrw/MetaWorld-window-open-v0": "to slide the window open",
    "window-open-v3": "to slide the window open",
    "vlmrw/MetaWorld-soccer-v0": _SOCCER,
    "soccer-v3": _SOCCER,
    # SoftGym, where it is installed (RL-VLM-F's SoftGym fork's env names).
    "vlmrw/SoftGym-ClothFoldDiagonal-v0": _CLOTH_FOLD,
    "vlmrw/SoftGym-RopeFlattenEasy-v0": _ROPE,
    "vlmrw/SoftGym-PassWater-v0": _PASS_WATER,
}


def goal_for(env_id: str) -> str:
    """The goal string registered for ``env_id``; a KeyError lists the known ids."""
    if env_id not in TASK_GOALS:
        raise KeyError(f"no goal registered for {env_id!r}: pass goal=... yourself (known: {sorted(TASK_GOALS)})")
    return TASK_GOALS[env_id]
