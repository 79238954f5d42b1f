"""Gymnasium and SB3 VecEnv wrappers that replace an env's reward: with the learned preference reward,
or with a CLIP score (VLM-RM).

The wrappers are thin: they render, resize and hand frames to a :class:`PreferenceLearner` (or to a
CLIP embedder), and know nothing of any VLM.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from vlm_reward_wrappers.config import LearnerConfig, make_config
from vlm_reward_wrappers.frames import FramePreparer, PreparedFrame, resize_frame, resize_longer_side
from vlm_reward_wrappers.labelers.base import Labeler
from vlm_reward_wrappers.learner import PreferenceLearner
from vlm_reward_wrappers.replay import REWARD_INPUT_KEY, REWARD_MODEL_KEY, register_reward_model
from vlm_reward_wrappers.reward_model import RewardModel
from vlm_reward_wrappers.rollout import DEFERRED_KEY, DeferredRewards

#: Key of the frame that :class:`FrameInfoWrapper` puts in ``info``.
FRAME_KEY = "vlm_frame"
#: Key of the query frame (for the labeler) that :class:`FrameInfoWrapper` puts in ``info`` when one is due.
QUERY_FRAME_KEY = "vlm_query_frame"
#: Key of the seconds :class:`FrameInfoWrapper` spent rendering and preparing the frame, (render, frame_prep).
FRAME_COST_KEY = "vlm_frame_cost"


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
    labeler: Optional[Labeler],
    observation_space: gym.Space,
    reward_model: Optional[RewardModel],
    seed: Optional[int],
    learner_kwargs: Dict[str, Any],
) -> PreferenceLearner:
    """The learner of a wrapper, resumed from its label store; a model on the env's observations where the
    settings ask for one."""
    fields = {f.name for f in dataclasses.fields(LearnerConfig)}
    config = make_config(learner_kwargs.pop("config", None),
                         **{k: learner_kwargs.pop(k) for k in list(learner_kwargs) if k in fields})
    if reward_model is None and config.reward_input == "observation":
        reward_model = RewardModel("observation", (_observation_dim(observation_space),),
                                   ensemble_size=config.ensemble_size, seed=seed,
                                   uncertainty_penalty=config.uncertainty_penalty)
    learner = PreferenceLearner(goal, labeler, config, reward_model=reward_model, seed=seed, **learner_kwargs)
    learner.resume()  # labels a previous run paid for: read back and trained on before the first step
    return learner


def _check_fits(learner: PreferenceLearner, observation_space: gym.Space) -> PreferenceLearner:
    """``learner``, or a ValueError saying how its reward model and the env differ."""
    model = learner.reward_model
    if model.reward_input == "observation" and (_observation_dim(observation_space),) != tuple(model.input_shape):
        raise ValueError(
            f"the saved reward model reads observations of shape {tuple(model.input_shape)}, but this env's are "
            f"{observation_space.shape}: load it onto the env it was trained on"
        )
    return learner


class _StepInfo:
    """What the wrappers add to each step's ``info``: the true reward, the reward-model input and the
    reward model's key (for :class:`~vlm_reward_wrappers.replay.RelabelingReplayBuffer`), the true
    return and length of an episode that ends (``info["gt_episode"]``, logged by
    :class:`~vlm_reward_wrappers.callbacks.VLMMetricsCallback` because SB3's Monitor sees only the
    learned reward), and ``is_success`` from an env's ``success`` (read by SB3's EvalCallback)."""

    def __init__(self, learner: PreferenceLearner, n_envs: int) -> None:
        self.model_key = register_reward_model(learner.reward_model)
        self.returns, self.lengths = np.zeros(n_envs), np.zeros(n_envs, dtype=np.int64)

    def annotate(self, infos: Sequence[dict], gt_rewards: np.ndarray, inputs: Union[np.ndarray, PreparedFrame],
                 dones: np.ndarray, deferred: Optional[DeferredRewards] = None, exploring: bool = False) -> None:
        """``inputs``: the step's reward-model inputs, or the one being prepared (then left out of ``info``)."""
        if deferred is not None:  # the algorithm's buffer scores these steps, not the wrapper
            deferred.add(inputs, np.full(len(infos), not exploring))
            for info in infos:
                info[DEFERRED_KEY] = not exploring
        self.returns += gt_rewards
        self.lengths += 1
        for i, info in enumerate(infos):
            info["gt_reward"] = float(gt_rewards[i])
            info[REWARD_MODEL_KEY] = self.model_key
            if not isinstance(inputs, PreparedFrame):
                info[REWARD_INPUT_KEY] = inputs[i]
            if "success" in info and "is_success" not in info:
                info["is_success"] = bool(info["success"])
            if dones[i]:
                info["gt_episode"] = {"r": float(self.returns[i]), "l": int(self.lengths[i])}
                self.returns[i], self.lengths[i] = 0.0, 0


class VLMRewardWrapper(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Replaces the env's reward with a reward model trained continually on a labeler's preferences.

    The env's own reward goes to ``info["gt_reward"]``; only the oracle teacher and the metrics read it.
    Observations, spaces and termination pass through unchanged; ``info`` keeps all it had and gains
    the keys listed in docs/training.md.

    :param env: an env created with ``render_mode="rgb_array"``.
    :param goal: the task in words, e.g. "the pole is upright on the cart".
    :param labeler: compares frames against the goal (a VLM labeler, CLIP or :class:`OracleLabeler`);
        None for a frozen wrapper.
    :param reward_model: a model to continue from (e.g. :meth:`RewardModel.load`, or another wrapper's
        ``learner.reward_model`` for an evaluation env); a new one by default.
    :param training: learn (True) or only score with the current reward model, sending no query (False),
        like SB3's VecNormalize; settable later as ``env.training``.
    :param seed: seed of the reward model, pair sampling and training.
    :param score_in_buffer: leave each step's reward to the algorithm's buffer, which scores whole
        rollouts or new transitions in batches: the step returns 0.0 (see :mod:`~vlm_reward_wrappers.rollout`
        for the buffer to pass). Faster; SB3's Monitor then logs zeros (``vlm/gt_episode_return`` stays true).
        With a rollout buffer the input is also prepared in a worker process while the next step renders,
        and left out of ``info``.
    :param learner: a learner to use as it is (:meth:`load` passes one); the other arguments then only
        describe the env.
    :param learner_kwargs: :class:`PreferenceLearner` arguments: ``config`` (a preset name or a
        :class:`~vlm_reward_wrappers.config.LearnerConfig`), any of its settings by name
        (``reward_input``, ``reward_image_size``, ``query_every``, ``feedback_budget``, ...),
        ``label_store``, ``asynchronous``, ``retry``.
    """

    def __init__(
        self,
        env: gym.Env,
        goal: str,
        labeler: Optional[Labeler],
        reward_model: Optional[RewardModel] = None,
        training: bool = True,
        seed: Optional[int] = None,
        score_in_buffer: bool = False,
        learner: Optional[PreferenceLearner] = None,
        **learner_kwargs: Any,
    ) -> None:
        _check_render_mode(env.render_mode, "VLMRewardWrapper")
        # No deep copy: labelers hold models and connections; a recreated wrapper shares them.
        gym.utils.RecordConstructorArgs.__init__(
            self, goal=goal, labeler=labeler, reward_model=reward_model, training=training, seed=seed,
            score_in_buffer=score_in_buffer, _disable_deepcopy=True, **learner_kwargs,
        )
        gym.Wrapper.__init__(self, env)
        self.learner = _check_fits(learner, env.observation_space) if learner is not None else _make_learner(
            goal, labeler, env.observation_space, reward_model, seed, {**learner_kwargs, "training": training})
        self.reward_image_size = self.learner.config.reward_image_size
        self._info = _StepInfo(self.learner, 1)
        self._env_steps = 0
        #: The inputs of the steps left to the algorithm's buffer (``score_in_buffer``), else None.
        self.deferred_rewards = DeferredRewards() if score_in_buffer else None
        self._preparer: Optional[FramePreparer] = None
        #: The step whose input is being prepared: (that input, true reward, query frames).
        self._pending: Optional[Tuple[PreparedFrame, np.ndarray, Optional[List[np.ndarray]]]] = None

    @property
    def training(self) -> bool:
        """Whether the wrapper learns (sends queries, trains) or only scores."""
        return self.learner.training

    @training.setter
    def training(self, value: bool) -> None:
        if value and self.learner.service is None:
            raise ValueError("this wrapper was made without a labeler: it can only score")
        self.learner.training = value

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        self._info.returns[:], self._info.lengths[:] = 0.0, 0
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        obs, gt_reward, terminated, truncated, info = self.env.step(action)
        cost = self.learner.cost
        with cost.timing("render"):
            rendered = self.env.render()
        gt = np.array([gt_reward], dtype=np.float64)
        query = [rendered] if self.learner.query_frame_due(self._env_steps) else None
        self._env_steps += 1
        if self._prepares_ahead:
            # Nothing of this step's return needs its input: it is prepared while the agent acts and the
            # env renders the next step, and the learner records the step then.
            with cost.timing("frame_prep"):
                if self._preparer is None:
                    self._preparer = FramePreparer(self.reward_image_size, np.shape(rendered))
                frames = self._preparer.submit(rendered)  # checks the frame: a bad one fails at its own step
            self._record_pending()
            # A copy of the query frame: the env may render the next step into the same array.
            self._pending = (frames, gt, None if query is None else [np.array(rendered)])
            self._info.annotate([info], gt, frames, [terminated or truncated], self.deferred_rewards)
            return obs, 0.0, terminated, truncated, info
        self._record_pending()
        with cost.timing("frame_prep"):
            frames = resize_frame(rendered, self.reward_image_size)[None]
        observations = None
        if self.learner.wants_observations:
            observations = np.asarray(obs, dtype=np.float32)[None]
        exploring = self.learner.exploring
        reward = self.learner.observe(frames, gt, observations, query, score=self.deferred_rewards is None)
        self._info.annotate([info], gt, self.learner.reward_inputs(frames, observations), [terminated or truncated],
                            self.deferred_rewards, exploring)
        return obs, float(reward[0]), terminated, truncated, info

    @property
    def _prepares_ahead(self) -> bool:
        """Whether the step's input may be prepared beside the loop: a rollout buffer scores the step and
        the learner needs only its frame (not the observation, nor an exploration reward now)."""
        return (self.deferred_rewards is not None and self.deferred_rewards.claimed_by == "rollout"
                and not self.learner.wants_observations)

    def _record_pending(self) -> None:
        """Hand the step being prepared to the learner (it waits for the input, which is ready by now)."""
        if self._pending is None:
            return
        frames, gt, query = self._pending
        self._pending = None
        with self.learner.cost.timing("frame_prep"):
            frames = frames.result()
        self.learner.observe(frames, gt, None, query, score=False)

    def save(self, path: Union[str, Path]) -> None:
        """Save the learner (:meth:`PreferenceLearner.save`) so a stopped run can go on."""
        self._record_pending()
        self.learner.save(path)

    @classmethod
    def load(cls, path: Union[str, Path], env: gym.Env, labeler: Optional[Labeler], **kwargs: Any) -> "VLMRewardWrapper":
        """Wrap ``env`` with the learner saved at ``path``, going on where it stopped.

        :param kwargs: :meth:`PreferenceLearner.load` arguments (``label_store``, ``asynchronous``, ...).
        """
        learner = PreferenceLearner.load(path, labeler, **kwargs)
        return cls(env, learner.goal, labeler, learner=learner)

    def close(self) -> None:
        self._record_pending()
        if self._preparer is not None:
            self._preparer.close()
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
        #: Set by :class:`VLMRewardVecEnvWrapper` when its labeler is shown query frames: their longer
        #: side, and every how many steps one is kept (shrunk here, in the worker, before it is sent).
        self.query_image_size: Optional[int] = None
        self.query_frame_every = 1
        self._steps = 0

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        started = time.perf_counter()
        rendered = self.env.render()
        rendered_at = time.perf_counter()
        info[FRAME_KEY] = resize_frame(rendered, self.reward_image_size)
        if self.query_image_size is not None and self._steps % self.query_frame_every == 0:
            info[QUERY_FRAME_KEY] = resize_longer_side(rendered, self.query_image_size)
        info[FRAME_COST_KEY] = (rendered_at - started, time.perf_counter() - rendered_at)
        self._steps += 1
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
        labeler: Optional[Labeler],
        reward_model: Optional[RewardModel] = None,
        training: bool = True,
        seed: Optional[int] = None,
        score_in_buffer: bool = False,
        learner: Optional[PreferenceLearner] = None,
        **learner_kwargs: Any,
    ) -> None:
        _check_render_mode(venv.render_mode, "VLMRewardVecEnvWrapper")
        super().__init__(venv)
        self.learner = _check_fits(learner, venv.observation_space) if learner is not None else _make_learner(
            goal, labeler, venv.observation_space, reward_model, seed, {**learner_kwargs, "training": training})
        self.reward_image_size = self.learner.config.reward_image_size
        self._info = _StepInfo(self.learner, self.num_envs)
        self.deferred_rewards = DeferredRewards() if score_in_buffer else None
        self._frames_in_info = all(venv.env_is_wrapped(FrameInfoWrapper))
        self._env_steps = np.zeros(self.num_envs, dtype=np.int64)
        if self._frames_in_info and self.learner.query_frames is not None:
            venv.set_attr("query_image_size", self.learner.query_image_size)
            venv.set_attr("query_frame_every", self.learner.config.query_frame_every)
        if not self._frames_in_info:
            warnings.warn(
                "sub-envs are not wrapped in FrameInfoWrapper: frames come from get_images(), so a terminal "
                "step is scored on the next episode's first frame; pass wrapper_class=FrameInfoWrapper to "
                "make_vec_env to fix this and render in the workers",
                stacklevel=2,
            )

    training = VLMRewardWrapper.training

    def reset(self):
        self._info.returns[:], self._info.lengths[:] = 0.0, 0
        return self.venv.reset()

    def step_wait(self):
        obs, gt_rewards, dones, infos = self.venv.step_wait()
        cost = self.learner.cost
        if self._frames_in_info:
            frames = np.stack([info.pop(FRAME_KEY) for info in infos])
            query = [info.pop(QUERY_FRAME_KEY, None) for info in infos]
            for render_s, frame_prep_s in (info.pop(FRAME_COST_KEY) for info in infos):
                cost.add("render", render_s)
                cost.add("frame_prep", frame_prep_s)
        else:
            with cost.timing("render"):
                images = self.venv.get_images()
            with cost.timing("frame_prep"):
                frames = np.stack([resize_frame(image, self.reward_image_size) for image in images])
            query = [image if self.learner.query_frame_due(k) else None for image, k in zip(images, self._env_steps)]
        self._env_steps += 1
        observations = None
        if self.learner.wants_observations:
            observations = np.stack([
                info["terminal_observation"] if done and "terminal_observation" in info else o
                for o, done, info in zip(obs, dones, infos)
            ]).astype(np.float32)
        exploring = self.learner.exploring
        rewards = self.learner.observe(frames, gt_rewards, observations, query, score=self.deferred_rewards is None)
        self._info.annotate(infos, gt_rewards, self.learner.reward_inputs(frames, observations), dones,
                            self.deferred_rewards, exploring)
        return obs, rewards, dones, infos

    def save(self, path: Union[str, Path]) -> None:
        """Save the learner (:meth:`PreferenceLearner.save`) so a stopped run can go on."""
        self.learner.save(path)

    @classmethod
    def load(cls, path: Union[str, Path], venv: VecEnv, labeler: Optional[Labeler], **kwargs: Any
             ) -> "VLMRewardVecEnvWrapper":
        """Wrap ``venv`` with the learner saved at ``path``, going on where it stopped (as
        :meth:`VLMRewardWrapper.load`; SB3's ``VecNormalize.load`` re-attaches the same way).

        :param kwargs: :meth:`PreferenceLearner.load` arguments (``label_store``, ``asynchronous``, ...).
        """
        learner = PreferenceLearner.load(path, labeler, **kwargs)
        return cls(venv, learner.goal, labeler, learner=learner)

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
