"""Tasks whose true reward measures the goal, registered with Gymnasium on import.

The MuJoCo tasks (cloth, rope, MetaWorld) import mujoco only when made, so importing this package costs
little and a missing extra is reported when a task is made; SoftGym ids exist only where softgym imports.
"""

from gymnasium.envs.registration import register, registry

from vlm_reward_wrappers.envs.mujoco_setup import select_mujoco_gl
from vlm_reward_wrappers.envs.cloth import ClothFlattenEnv, ClothFoldEnv
from vlm_reward_wrappers.envs.metaworld import OTHER_TASK_CAMERAS, RLVLMF_CAMERAS, MetaWorldEnv, make_metaworld_env
from vlm_reward_wrappers.envs.rope import RopeStraightenEnv
from vlm_reward_wrappers.envs.softgym import SoftGymEnv, register_softgym_envs
from vlm_reward_wrappers.envs.tasks import TASK_GOALS, goal_for

if "vlmrw/CartPoleAngle-v0" not in registry:
    register(
        id="vlmrw/CartPoleAngle-v0",
        entry_point="vlm_reward_wrappers.envs.cartpole:AngleCartPoleEnv",
        max_episode_steps=100,
    )

#: id -> (entry point, kwargs, horizon in steps; None where the env ends its own episodes).
_MUJOCO_ENVS = {
    # RL-VLM-F's cloth fold is a one-step task: one place of the held corner, which the env ends as terminal
    # (the horizon of 1 stays for the tools that read it from the spec, such as reward_image_size.py).
    "vlmrw/ClothFold-v0": ("vlm_reward_wrappers.envs.cloth:ClothFoldEnv", {}, 1),
    "vlmrw/ClothFoldMultiStep-v0": ("vlm_reward_wrappers.envs.cloth:ClothFoldEnv", {"multi_step": True}, 3),
    "vlmrw/ClothFlatten-v0": ("vlm_reward_wrappers.envs.cloth:ClothFlattenEnv", {}, 5),
    "vlmrw/RopeStraighten-v0": ("vlm_reward_wrappers.envs.rope:RopeStraightenEnv", {}, 5),
    **{
        f"vlmrw/MetaWorld-{task}-v0": ("vlm_reward_wrappers.envs.metaworld:MetaWorldEnv", {"task": task}, None)
        for task in [*RLVLMF_CAMERAS, *OTHER_TASK_CAMERAS]
    },
}
for _id, (_entry_point, _kwargs, _horizon) in _MUJOCO_ENVS.items():
    if _id not in registry:
        register(id=_id, entry_point=_entry_point, kwargs=_kwargs, max_episode_steps=_horizon)

#: The vlmrw/SoftGym-<Name>-v0 ids registered (none where softgym does not import).
SOFTGYM_IDS = register_softgym_envs()

__all__ = [
    "SOFTGYM_IDS",
    "TASK_GOALS",
    "ClothFlattenEnv",
    "ClothFoldEnv",
    "MetaWorldEnv",
    "RopeStraightenEnv",
    "SoftGymEnv",
    "goal_for",
    "make_metaworld_env",
    "select_mujoco_gl",
]
