"""Gymnasium and SB3 VecEnv wrappers that replace an env's reward: with the learned preference reward,
or with a CLIP score (VLM-RM).

The wrappers are thin: they render, resize and hand frames to a :class:`PreferenceLearner` (or to a
CLIP embedder), and know nothing of any VLM.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional, Sequence, Tuple, Union

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from vlm_reward_wrappers.frames import resize_frame
from vlm_reward_wrappers.labelers.base import Labeler
from vlm_reward_wrappers.learner import PreferenceLearner
from vlm_reward_wrappers.reward_model import RewardModel

#: Key of the frame that :class:`FrameInfoWrapper` puts in ``info``.
FRAME_KEY = "vlm_frame"


def _check_render_mode(render_mode: Optional[str], what: str) -> None:
    if render_mode != "rgb_array":
        raise ValueError(
            f"{what} needs rendered frames, but the env's render_mode is {render_mode!r}: create it with "
            f"render_mode='rgb_array', e.g. gym.make(env_id, render_mode='rgb_array')"
        )


def _observation_dim(space: gym.Space) -> int:
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        raise ValueError(
            f"reward_input='observation' needs a flat Box observation space, got {space}; "
            "use reward_input='frame' (the default) or flatten the observations first"
        )
    return space.shape[0]


def _make_learner(
    goal: str,
    labeler: Labeler,
    observation_space: gym.Space,
    reward_input: str,
    reward_image_size: int,
    reward_model: Optional[RewardModel],
    ensemble_size: int,
    seed: Optional[int],
    learner_kwargs: dict,
) -> PreferenceLearner:
    if reward_input not in ("frame", "observation"):
        raise ValueError(f"reward_input must be 'frame' or 'observation', got {reward_input!r}")
    shape: Tuple[int, ...] = (
        (reward_image_size, reward_image_size, 3) if reward_input == "frame" else (_observation_dim(observation_space),)
    )
    if reward_model is None:
        reward_model = RewardModel(reward_input, shape, ensemble_size=ensemble_size, seed=seed)
    elif (reward_model.reward_input, reward_model.input_shape, reward_model.ensemble_size) != (
        reward_input, shape, ensemble_size
    ):
        raise ValueError(
            f"the reward_model given reads {reward_model.reward_input} inputs of shape {reward_model.input_shape} "
            f"with {reward_model.ensemble_size} members, but the wrapper was asked for {reward_input} inputs of "
            f"shape {shape} with {ensemble_size}: pass the model's own reward_input, reward_image_size and "
            "ensemble_size"
        )
    return PreferenceLearner(goal, labeler, reward_model, seed=seed, **learner_kwargs)


class VLMRewardWrapper(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Replaces the env's reward with a reward model trained continually on a labeler's preferences.

    The env's own reward goes to ``info["gt_reward"]``; only the oracle teacher and the metrics read it.
    Observations, spaces, termination and ``info`` are otherwise passed through unchanged.

    :param env: an env created with ``render_mode="rgb_array"``.
    :param goal: the task in words, e.g. "the pole is upright on the cart".
    :param labeler: compares frames against the goal (a VLM labeler, CLIP or :class:`OracleLabeler`).
    :param reward_input: what the reward model reads: "frame" (RL-VLM-F) or "observation".
    :param reward_image_size: side in pixels of the reward model's input frames.
    :param reward_model: a model to continue from (e.g. :meth:`RewardModel.load`); a new one by default.
        Its input and ensemble size must match ``reward_input``, ``reward_image_size`` and ``ensemble_size``.
    :param ensemble_size: members of a new reward model.
    :param seed: seed of the reward model, pair sampling and training.
    :param learner_kwargs: schedule and training settings of :class:`PreferenceLearner`
        (``query_every``, ``pairs_per_query``, ``feedback_budget``, ``label_store``, ...).
    """

    def __init__(
        self,
        env: gym.Env,
        goal: str,
        labeler: Labeler,
        reward_input: str = "frame",
        reward_image_size: int = 64,
        reward_model: Optional[RewardModel] = None,
        ensemble_size: int = 3,
        seed: Optional[int] = None,
        **learner_kwargs: Any,
    ) -> None:
        _check_render_mode(env.render_mode, "VLMRewardWrapper")
        # No deep copy: labelers hold models and connections; a recreated wrapper shares them.
        gym.utils.RecordConstructorArgs.__init__(
            self, goal=goal, labeler=labeler, reward_input=reward_input, reward_image_size=reward_image_size,
            reward_model=reward_model, ensemble_size=ensemble_size, seed=seed, _disable_deepcopy=True,
            **learner_kwargs,
        )
        gym.Wrapper.__init__(self, env)
        self.reward_image_size = reward_image_size
        self.learner = _make_learner(
            goal, labeler, env.observation_space, reward_input, reward_image_size, reward_model, ensemble_size, seed,
            learner_kwargs,
        )

    def step(self, action):
        obs, gt_reward, terminated, truncated, info = self.env.step(action)
        frame = resize_frame(self.env.render(), self.reward_image_size)
        observations = None
        if self.learner.reward_model.reward_input == "observation":
            observations = np.asarray(obs, dtype=np.float32)[None]
        reward = self.learner.observe(frame[None], np.array([gt_reward], dtype=np.float64), observations)[0]
        info["gt_reward"] = gt_reward
        return obs, float(reward), terminated, truncated, info

    def close(self) -> None:
        self.learner.close()
        super().close()


class FrameInfoWrapper(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Puts each step's resized frame in ``info["vlm_frame"]``, rendered inside the env's own process.

    Use it as ``wrapper_class`` of SB3's ``make_vec_env`` under :class:`VLMRewardVecEnvWrapper`: frames
    are then rendered in parallel by SubprocVecEnv's workers, and the frame of a terminal step is the
    terminal state's, not the next episode's first.
    """

    def __init__(self, env: gym.Env, reward_image_size: int = 64) -> None:
        _check_render_mode(env.render_mode, "FrameInfoWrapper")
        gym.utils.RecordConstructorArgs.__init__(self, reward_image_size=reward_image_size)
        gym.Wrapper.__init__(self, env)
        self.reward_image_size = reward_image_size

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info[FRAME_KEY] = resize_frame(self.env.render(), self.reward_image_size)
        return obs, reward, terminated, truncated, info


class VLMRewardVecEnvWrapper(VecEnvWrapper):
    """:class:`VLMRewardWrapper` for SB3 VecEnvs: one learner for all envs, reward inference batched.

    Works with DummyVecEnv and SubprocVecEnv. Wrap the sub-envs in :class:`FrameInfoWrapper` so frames
    are rendered in the workers and terminal frames are right; without it frames come from
    ``get_images()`` and the frame of a terminal step is the next episode's first (a warning says so).
    Arguments are those of :class:`VLMRewardWrapper`.
    """

    def __init__(
        self,
        venv: VecEnv,
        goal: str,
        labeler: Labeler,
        reward_input: str = "frame",
        reward_image_size: int = 64,
        reward_model: Optional[RewardModel] = None,
        ensemble_size: int = 3,
        seed: Optional[int] = None,
        **learner_kwargs: Any,
    ) -> None:
        _check_render_mode(venv.render_mode, "VLMRewardVecEnvWrapper")
        super().__init__(venv)
        self.reward_image_size = reward_image_size
        self.learner = _make_learner(
            goal, labeler, venv.observation_space, reward_input, reward_image_size, reward_model, ensemble_size, seed,
            learner_kwargs,
        )
        self._frames_in_info = all(venv.env_is_wrapped(FrameInfoWrapper))
        if not self._frames_in_info:
            warnings.warn(
                "sub-envs are not wrapped in FrameInfoWrapper: frames come from get_images(), so a terminal "
                "step is scored on the next episode's first frame; pass wrapper_class=FrameInfoWrapper to "
                "make_vec_env to fix this and render in the workers",
                stacklevel=2,
            )

    def reset(self):
        return self.venv.reset()

    def step_wait(self):
        obs, gt_rewards, dones, infos = self.venv.step_wait()
        if self._frames_in_info:
            frames = np.stack([info.pop(FRAME_KEY) for info in infos])
        else:
            frames = np.stack([resize_frame(image, self.reward_image_size) for image in self.venv.get_images()])
        observations = None
        if self.learner.reward_model.reward_input == "observation":
            observations = np.stack([
                info["terminal_observation"] if done and "terminal_observation" in info else o
                for o, done, info in zip(obs, dones, infos)
            ]).astype(np.float32)
        rewards = self.learner.observe(frames, gt_rewards, observations)
        for info, gt in zip(infos, gt_rewards):
            info["gt_reward"] = float(gt)
        return obs, rewards, dones, infos

    def close(self) -> None:
        self.learner.close()
        self.venv.close()


class CLIPRewardWrapper(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Replaces the env's reward with a CLIP score of each rendered frame; no preferences, no training.

    Without ``baseline`` the reward is the cosine similarity of frame and goal embeddings. With a
    baseline text (what the scene looks like without the goal, e.g. "a pole on a cart"), it is
    VLM-RM's baseline-regularised score on unit embeddings x (frame) and g (goal)::

        reward = 1 - 0.5 * ||(x - g) P||^2,   P = alpha d d^T / ||d||^2 + (1 - alpha) I,   d = g - b

    which projects out directions the goal and baseline texts do not differ in (alpha = 0 gives back
    the cosine similarity). The env's reward goes to ``info["gt_reward"]``.

    :param env: an env created with ``render_mode="rgb_array"``.
    :param goal: the task in words.
    :param baseline: the baseline text b, or None for the plain CLIP score.
    :param alpha: strength of the baseline regularisation in [0, 1].
    :param model_name: an open_clip architecture, or a
        :class:`~vlm_reward_wrappers.labelers.clip.CLIPEmbedder` to share (``[clip]`` extra).
    :param clip_kwargs: the embedder's other arguments (``checkpoint_path``, ...).
    """

    def __init__(
        self,
        env: gym.Env,
        goal: str,
        baseline: Optional[str] = None,
        alpha: float = 0.5,
        model_name: Union[str, Any] = "ViT-B-32",
        **clip_kwargs: Any,
    ) -> None:
        _check_render_mode(env.render_mode, "CLIPRewardWrapper")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        # Not deep-copied: an embedder holds a model.
        gym.utils.RecordConstructorArgs.__init__(
            self, _disable_deepcopy=True, goal=goal, baseline=baseline, alpha=alpha, model_name=model_name,
            **clip_kwargs,
        )
        gym.Wrapper.__init__(self, env)
        from vlm_reward_wrappers.labelers.clip import make_embedder

        self.embedder = make_embedder(model_name, clip_kwargs)
        self.goal_embedding = self.embedder.embed_texts([goal])[0]
        dim = len(self.goal_embedding)
        #: (D, D) projection P; the identity without a baseline.
        self.projection = np.eye(dim, dtype=np.float32)
        if baseline is not None:
            direction = self.goal_embedding - self.embedder.embed_texts([baseline])[0]
            self.projection = (
                alpha * np.outer(direction, direction) / float(direction @ direction) + (1.0 - alpha) * self.projection
            ).astype(np.float32)

    def clip_reward(self, frames: Union[np.ndarray, Sequence[np.ndarray]]) -> np.ndarray:
        """(N, H, W, 3) uint8 frames -> (N,) float32 rewards (the formula in the class docstring)."""
        offset = (self.embedder.embed_frames(frames) - self.goal_embedding) @ self.projection
        return (1.0 - 0.5 * np.sum(offset**2, axis=-1)).astype(np.float32)

    def step(self, action):
        obs, gt_reward, terminated, truncated, info = self.env.step(action)
        info["gt_reward"] = gt_reward
        return obs, float(self.clip_reward([self.env.render()])[0]), terminated, truncated, info
