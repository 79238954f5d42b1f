"""Tasks whose true reward measures the goal, registered with Gymnasium on import."""

from gymnasium.envs.registration import register, registry

from vlm_reward_wrappers.envs.tasks import TASK_GOALS, goal_for

if "vlmrw/CartPoleAngle-v0" not in registry:
    register(
        id="vlmrw/CartPoleAngle-v0",
        entry_point="vlm_reward_wrappers.envs.cartpole:AngleCartPoleEnv",
        max_episode_steps=100,
    )

__all__ = ["TASK_GOALS", "goal_for"]
