"""Offline reward labelling: VLM rewards for fixed datasets, written as new Minari datasets.

Two methods, both on the frames recorded with a dataset:

- RG-VLM (arXiv 2504.08772): :class:`WindowScorer` shows a score labeler windows of consecutive
  frames and the actions taken between them. Stage 1 asks how each action moves the task forward
  given the goal; stage 2 asks for a 0-10 score per transition.
- RL-VLM-F offline: :class:`PreferenceRelabeler` asks a preference labeler to compare pairs of the
  dataset's frames, trains a :class:`~vlm_reward_wrappers.reward_model.RewardModel` on the answers
  once, and rewards every transition with the model's reward of the frame it ends in.

Every query and answer is committed to a :class:`~vlm_reward_wrappers.labels.LabelStore` before it is
used and looked up there before it is sent, so an interrupted run resumes where it stopped. Datasets
come from Minari, NumPy arrays or an SB3 replay buffer (:class:`OfflineDataset`) and go to Minari
(``pip install 'vlm-reward-wrappers[offline]'``; Minari is imported only when a dataset is read or
written).

The reward written is ``weight * vlm_reward``, or ``dataset_reward + weight * vlm_reward``
(:func:`mix_rewards`): RG-VLM uses its scores alone or as an auxiliary to the sparse reward.
"""

from __future__ import annotations

import abc
import logging
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import gymnasium as gym
import numpy as np

from vlm_reward_wrappers.frames import FrameBuffer, resize_frame
from vlm_reward_wrappers.labelers.base import Labeler, Query, call_with_retries, check_goal
from vlm_reward_wrappers.labelers.chat import ChatLabeler, raw_text
from vlm_reward_wrappers.labelers.prompts import (
    MAX_SCORE,
    describe_actions,
    frame_to_data_uri,
    image_messages,
    parse_scores,
    progress_prompt,
    score_prompt,
    score_prompt_version,
    single_stage_score_prompt,
    text_messages,
)
from vlm_reward_wrappers.labels import LabelStore, PreferenceDataset, ScoreRecord, frame_hash, window_hash
from vlm_reward_wrappers.learner import LabelWorker, PendingQuery
from vlm_reward_wrappers.reward_model import BradleyTerryTrainer, RewardModel
from vlm_reward_wrappers.sampling import PairSampler, make_sampler

logger = logging.getLogger(__name__)

#: Info keys searched, in order, for frames when a dataset's observations are not images.
FRAME_INFO_KEYS = ("frame", "vlm_frame", "frames", "pixels", "render", "rgb")
#: Info key of the true reward, as the wrappers name it (``info["gt_reward"]``).
GT_REWARD_KEY = "gt_reward"


def _import_minari():
    try:
        import minari
    except ImportError as error:
        raise ImportError("offline datasets need Minari: pip install 'vlm-reward-wrappers[offline]'") from error
    return minari


# ------------------------------------------------------------------------------------------- data
@dataclass
class Episode:
    """One episode of a fixed dataset, with the frames a labeler sees.

    :param observations: (N + 1, ...) observations (or a dict / tuple of such arrays), kept as read.
    :param actions: (N, ...) actions (or a dict / tuple of such arrays).
    :param rewards: (N,) the dataset's own rewards, often sparse.
    :param terminations: (N,) bool.
    :param truncations: (N,) bool.
    :param frames: (N + 1, H, W, 3) uint8 rgb frames: ``frames[t]`` before action t, ``frames[t + 1]`` after.
    :param gt_rewards: (N,) true reward of each transition, read only by simulated teachers and metrics.
    :param infos: per-step infos as read, written back unchanged.
    :param seed: the episode's reset seed, where recorded.
    :param options: its reset options, where recorded.
    """

    observations: Any
    actions: Any
    rewards: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray
    frames: np.ndarray
    gt_rewards: np.ndarray
    infos: Optional[dict] = None
    seed: Optional[int] = None
    options: Optional[dict] = None

    def __post_init__(self) -> None:
        n = len(self.rewards)
        if len(self.frames) != n + 1:
            raise ValueError(
                f"an episode of {n} transitions needs {n + 1} frames (the first before its first action), got "
                f"{len(self.frames)}: record the reset frame too"
            )

    def __len__(self) -> int:
        return len(self.rewards)

    def window(self, start: int, stop: int) -> "Window":
        """The transitions ``start`` to ``stop - 1`` as a window query."""
        return Window(self.frames[start : stop + 1], _steps(self.actions, start, stop), self.gt_rewards[start:stop])


def _steps(tree: Any, start: int, stop: int) -> list:
    """Per-step values ``start`` to ``stop - 1`` of an array, or of a dict / tuple of arrays."""
    if isinstance(tree, dict):
        return [dict(zip(tree, values)) for values in zip(*(_steps(v, start, stop) for v in tree.values()))]
    if isinstance(tree, tuple):
        return list(zip(*(_steps(v, start, stop) for v in tree)))
    return list(np.asarray(tree)[start:stop])


def _hwc(frames: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 frames from channel-last or channel-first (SB3's CNN layout) images."""
    frames = np.asarray(frames)
    if frames.ndim == 4 and frames.shape[-1] != 3 and frames.shape[1] == 3:
        frames = np.moveaxis(frames, 1, -1)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (N, H, W, 3) rgb images, got shape {frames.shape}")
    return frames.astype(np.uint8, copy=False)


def _is_image(space: gym.Space) -> bool:
    return (
        isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3
        and 3 in (space.shape[0], space.shape[-1])
    )


class OfflineDataset:
    """The episodes of a fixed dataset and its spaces: read from Minari, NumPy arrays or an SB3 replay
    buffer, written to Minari with new rewards.

    Frames are held in memory: record them at the size the labeler should see.

    :param episodes: the episodes, in order.
    :param observation_space: the observation space (written to Minari).
    :param action_space: the action space.
    :param env_spec: spec of the env that collected the data, kept in the written dataset; None if unknown.
    :param metadata: Minari metadata carried over (author, description, ...).
    """

    def __init__(
        self,
        episodes: Sequence[Episode],
        observation_space: gym.Space,
        action_space: gym.Space,
        env_spec: Optional[gym.envs.registration.EnvSpec] = None,
        metadata: Optional[Dict[str, Any]] = None,
    ) -> None:
        if not episodes:
            raise ValueError("the dataset has no episodes")
        self.episodes = list(episodes)
        self.observation_space = observation_space
        self.action_space = action_space
        self.env_spec = env_spec
        self.metadata = dict(metadata or {})

    @property
    def total_steps(self) -> int:
        return sum(len(episode) for episode in self.episodes)

    @property
    def gt_rewards(self) -> np.ndarray:
        """(total_steps,) true rewards of all transitions, episode after episode."""
        return np.concatenate([episode.gt_rewards for episode in self.episodes])

    @property
    def gt_reward_range(self) -> Tuple[float, float]:
        """(lowest, highest) true reward in the dataset."""
        gt = self.gt_rewards
        return float(np.nanmin(gt)), float(np.nanmax(gt))

    # ------------------------------------------------------------------------------------- readers
    @classmethod
    def from_minari(
        cls, dataset: Any, frame_key: Optional[str] = None, gt_reward_key: Optional[str] = GT_REWARD_KEY
    ) -> "OfflineDataset":
        """Read a Minari dataset held locally (never downloaded).

        :param dataset: a ``minari.MinariDataset``, a dataset id, or a dataset's folder.
        :param frame_key: where the frames are: "observations" (image observations), "observations/<key>"
            (one part of dict observations) or "infos/<key>" (N + 1 frames per episode in the infos, as
            :class:`minari.DataCollector` records a frame that ``reset`` and ``step`` put in ``info``).
            None: image observations if there are any, else the first of :data:`FRAME_INFO_KEYS` in the infos.
        :param gt_reward_key: info key of the true reward (N or N + 1 values); where absent, the
            dataset's rewards stand in for it.
        """
        minari = _import_minari()
        if not isinstance(dataset, minari.MinariDataset):
            path = Path(dataset)
            if (path / "data").is_dir():
                path = path / "data"
            dataset = minari.MinariDataset(path) if (path / "metadata.json").is_file() else minari.load_dataset(str(dataset))
        metadatas = dataset.storage.get_episode_metadata(dataset.episode_indices)
        episodes = []
        for data, metadata in zip(dataset.iterate_episodes(), metadatas):
            infos = data.infos or {}
            key = frame_key or _find_frames(dataset.observation_space, infos)
            frames = _lookup({"observations": data.observations, "infos": infos}, key)
            n = len(data.rewards)
            gt = np.asarray(infos[gt_reward_key], dtype=np.float64) if gt_reward_key in infos else data.rewards
            if len(gt) not in (n, n + 1):
                raise ValueError(f"infos[{gt_reward_key!r}] holds {len(gt)} values for {n} transitions")
            episodes.append(Episode(
                data.observations, data.actions, np.asarray(data.rewards, dtype=np.float64),
                np.asarray(data.terminations, dtype=bool), np.asarray(data.truncations, dtype=bool), _hwc(frames),
                np.asarray(gt[len(gt) - n :], dtype=np.float64), data.infos, metadata.get("seed"), metadata.get("options"),
            ))
        keep = ("author", "author_email", "code_permalink", "algorithm_name", "description", "requirements",
                "eval_env_spec")
        raw = dataset.storage.metadata
        return cls(episodes, dataset.observation_space, dataset.action_space, dataset.env_spec,
                   {k: raw[k] for k in keep if raw.get(k) is not None})

    @classmethod
    def from_arrays(
        cls,
        observations: np.ndarray,
        next_observations: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminations: np.ndarray,
        truncations: np.ndarray,
        frames: np.ndarray,
        next_frames: np.ndarray,
        gt_rewards: Optional[np.ndarray] = None,
        observation_space: Optional[gym.Space] = None,
        action_space: Optional[gym.Space] = None,
        env_spec: Optional[gym.envs.registration.EnvSpec] = None,
    ) -> "OfflineDataset":
        """Read transitions held as flat arrays, in time order; episodes end at each termination or
        truncation (a last unfinished one is kept as it is).

        :param observations: (N, ...) observation before each action.
        :param next_observations: (N, ...) observation after it.
        :param actions: (N, ...) actions.
        :param rewards: (N,) rewards.
        :param terminations: (N,) bool.
        :param truncations: (N,) bool.
        :param frames: (N, H, W, 3) uint8 frame before each action (channel-first images are accepted).
        :param next_frames: (N, H, W, 3) frame after it.
        :param gt_rewards: (N,) true rewards, where known (default: the rewards).
        :param observation_space: default: an unbounded Box of the observations' shape and dtype.
        :param action_space: default: an unbounded Box of the actions' shape and dtype.
        :param env_spec: the collecting env's spec, if any.

        The written dataset keeps the frames (and true rewards) in its infos, under "frame" and
        "gt_reward", so it can be labelled again from Minari; frames that are the observations are not
        written twice.
        """
        observations, next_observations = np.asarray(observations), np.asarray(next_observations)
        actions, rewards = np.asarray(actions), np.asarray(rewards, dtype=np.float64)
        terminations, truncations = np.asarray(terminations, dtype=bool), np.asarray(truncations, dtype=bool)
        frames, next_frames = _hwc(frames), _hwc(next_frames)
        gt = rewards if gt_rewards is None else np.asarray(gt_rewards, dtype=np.float64)
        frames_are_observations = np.may_share_memory(observations, frames)
        ends = np.flatnonzero(terminations | truncations) + 1
        bounds = np.unique(np.concatenate([[0], ends, [len(rewards)]]))
        episodes = []
        for start, stop in zip(bounds[:-1], bounds[1:]):
            episode_frames = np.concatenate([frames[start:stop], next_frames[stop - 1 : stop]])
            infos = {GT_REWARD_KEY: np.concatenate([[np.nan], gt[start:stop]])}
            if not frames_are_observations:
                infos["frame"] = episode_frames
            episodes.append(Episode(
                np.concatenate([observations[start:stop], next_observations[stop - 1 : stop]]), actions[start:stop],
                rewards[start:stop], terminations[start:stop], truncations[start:stop], episode_frames,
                gt[start:stop], infos,
            ))
        observation_space = observation_space or gym.spaces.Box(-np.inf, np.inf, observations.shape[1:], observations.dtype)
        action_space = action_space or gym.spaces.Box(-np.inf, np.inf, actions.shape[1:], actions.dtype)
        return cls(episodes, observation_space, action_space, env_spec)

    @classmethod
    def from_replay_buffer(
        cls,
        buffer: Any,
        frames: Optional[np.ndarray] = None,
        next_frames: Optional[np.ndarray] = None,
        gt_rewards: Optional[np.ndarray] = None,
        env_spec: Optional[gym.envs.registration.EnvSpec] = None,
    ) -> "OfflineDataset":
        """Read an SB3 ``ReplayBuffer``; each of its envs' transitions make their own episodes.

        :param buffer: a ``stable_baselines3.common.buffers.ReplayBuffer`` (dict observations are not supported).
        :param frames: (buffer_size, n_envs, H, W, 3) frame before each stored action; None uses the
            observations when they are images.
        :param next_frames: the frame after it, same shape; None uses the next observations likewise.
        :param gt_rewards: (buffer_size, n_envs) true rewards, where known.
        :param env_spec: the collecting env's spec, if any.
        """
        size = buffer.buffer_size
        order = (buffer.pos + np.arange(size)) % size if buffer.full else np.arange(buffer.pos)
        if buffer.optimize_memory_usage:
            # SB3 then keeps no next observations: they are the following slots, and the oldest
            # transition's observation was overwritten by the newest one's next observation.
            order = order[1:] if buffer.full else order
            next_obs = buffer.observations[(order + 1) % size]
        else:
            next_obs = buffer.next_observations[order]
        obs = buffer.observations[order]
        if frames is None or next_frames is None:
            if not _is_image(buffer.observation_space):
                raise ValueError("the replay buffer's observations are not images: pass frames and next_frames")
            frames, next_frames = obs, next_obs
        else:
            frames, next_frames = np.asarray(frames)[order], np.asarray(next_frames)[order]
        actions = buffer.actions[order]
        if isinstance(buffer.action_space, gym.spaces.Discrete):
            actions = actions.reshape(len(order), buffer.n_envs).astype(np.int64)
        dones = buffer.dones[order].astype(bool)
        timeouts = buffer.timeouts[order].astype(bool) & dones  # SB3 reads timeouts only where done
        gt = buffer.rewards[order] if gt_rewards is None else np.asarray(gt_rewards)[order]
        episodes = []
        for env in range(buffer.n_envs):
            part = cls.from_arrays(
                obs[:, env], next_obs[:, env], actions[:, env], buffer.rewards[order, env], dones[:, env] & ~timeouts[:, env],
                timeouts[:, env], frames[:, env], next_frames[:, env], gt[:, env],
                buffer.observation_space, buffer.action_space,
            )
            episodes += part.episodes
        return cls(episodes, buffer.observation_space, buffer.action_space, env_spec)

    # ------------------------------------------------------------------------------------- writer
    def to_minari(self, dataset_id: str, rewards: Sequence[np.ndarray], description: Optional[str] = None) -> Any:
        """Write the dataset with new rewards as the local Minari dataset ``dataset_id``.

        Observations, actions, terminations, truncations, infos and episode seeds are written as read,
        without JPEG encoding, so they load back exactly.

        :param rewards: one (N_i,) array per episode.
        :param description: what the rewards are; appended to the source's description.
        :return: the new ``minari.MinariDataset``.
        """
        minari = _import_minari()
        from minari.data_collector import EpisodeBuffer

        if len(rewards) != len(self.episodes) or any(len(r) != len(e) for r, e in zip(rewards, self.episodes)):
            raise ValueError("rewards must hold one (N_i,) array per episode")
        buffers = [
            EpisodeBuffer(
                id=i, seed=None if episode.seed is None else int(episode.seed), options=episode.options,
                observations=episode.observations, actions=episode.actions,
                rewards=np.asarray(reward, dtype=np.float64), terminations=episode.terminations,
                truncations=episode.truncations, infos=episode.infos,
            )
            for i, (episode, reward) in enumerate(zip(self.episodes, rewards))
        ]
        meta = self.metadata
        text = "\n".join(filter(None, [meta.get("description"), description]))
        with warnings.catch_warnings():
            # Minari asks for authors, links and an env for every dataset; the source's are kept where it had them.
            warnings.filterwarnings("ignore", message=r".*(is set to None|env_spec is None)", category=UserWarning)
            dataset = minari.create_dataset_from_buffers(
                dataset_id, buffers, observation_space=self.observation_space, action_space=self.action_space,
                algorithm_name=meta.get("algorithm_name"), author=meta.get("author"),
                author_email=meta.get("author_email"), code_permalink=meta.get("code_permalink"),
                description=text or None, requirements=meta.get("requirements"), jpeg_encoding=False,
            )
        # Passing the env itself would make it (and need its packages) only to read its spaces.
        specs = {"env_spec": self.env_spec.to_json() if self.env_spec is not None else None,
                 "eval_env_spec": meta.get("eval_env_spec")}
        specs = {key: value for key, value in specs.items() if value is not None}
        if specs:
            dataset.storage.update_metadata(specs)
            dataset = minari.MinariDataset(dataset.storage.data_path)
        return dataset


def record_episodes(
    env: gym.Env, policy: Callable[[Any], Any], n_episodes: int, image_size: Optional[int] = 64, seed: int = 0
) -> OfflineDataset:
    """Roll out ``policy`` and keep what offline labelling needs, frames included.

    :param env: an env made with ``render_mode="rgb_array"``; its reward is kept as both the dataset's
        and the true reward (replace ``Episode.rewards`` to make a sparse dataset).
    :param policy: observation -> action.
    :param n_episodes: episodes to record; each runs until the env terminates or truncates it.
    :param image_size: side of the square frames kept, in pixels; None keeps them as rendered.
    :param seed: reset seed of the first episode (the next ones count up) and of the action space.
    """
    if env.render_mode != "rgb_array":
        raise ValueError(f"record_episodes needs an env made with render_mode='rgb_array', got {env.render_mode!r}")

    def frame() -> np.ndarray:
        rendered = env.render()
        return np.asarray(rendered, dtype=np.uint8) if image_size is None else resize_frame(rendered, image_size)

    env.action_space.seed(seed)
    episodes = []
    for episode in range(n_episodes):
        observation, _ = env.reset(seed=seed + episode)
        observations, frames, actions, rewards, terminations, truncations = [observation], [frame()], [], [], [], []
        done = False
        while not done:
            action = policy(observation)
            observation, reward, terminated, truncated, _ = env.step(action)
            observations.append(observation)
            frames.append(frame())
            actions.append(action)
            rewards.append(float(reward))
            terminations.append(terminated)
            truncations.append(truncated)
            done = terminated or truncated
        rewards, frames = np.asarray(rewards), np.stack(frames)
        episodes.append(Episode(
            np.stack(observations), np.stack(actions), rewards, np.asarray(terminations), np.asarray(truncations),
            frames, rewards.copy(), {"frame": frames, GT_REWARD_KEY: np.concatenate([[np.nan], rewards])},
            seed + episode,
        ))
    return OfflineDataset(episodes, env.observation_space, env.action_space, env.spec)


def _find_frames(space: gym.Space, infos: dict) -> str:
    """The frame key of a dataset whose ``frame_key`` was not given (see :meth:`OfflineDataset.from_minari`)."""
    if _is_image(space):
        return "observations"
    if isinstance(space, gym.spaces.Dict):
        for key, subspace in space.spaces.items():
            if _is_image(subspace):
                return f"observations/{key}"
    for key in FRAME_INFO_KEYS:
        if key in infos:
            return f"infos/{key}"
    raise ValueError(
        "the dataset has no frames: its observations are not images and its infos hold none of "
        f"{FRAME_INFO_KEYS}; record rendered frames in the infos (reset and step), or pass frame_key"
    )


def _lookup(tree: dict, key: str) -> np.ndarray:
    node: Any = tree
    for part in key.split("/"):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"frame_key {key!r}: no {part!r} in the episode's data")
        node = node[part]
    return np.asarray(node)


# ---------------------------------------------------------------------------------- RG-VLM scores
@dataclass(frozen=True)
class Window:
    """A window query: consecutive frames of one episode and the actions taken between them.

    :param frames: (W + 1, H, W, 3) uint8 frames, in order.
    :param actions: the W actions, one per-step value each.
    :param gt_rewards: (W,) true rewards of the W transitions; only simulated teachers read them.
    """

    frames: np.ndarray
    actions: Sequence
    gt_rewards: np.ndarray

    def __len__(self) -> int:
        return len(self.frames) - 1


@dataclass(frozen=True)
class WindowScores:
    """A score labeler's answer to one window.

    :param scores: (W,) float scores in [0, 10], NaN where the answer gave none that could be read.
    :param raw: the labeler's raw output (the VLM's text), kept in the label store.
    """

    scores: np.ndarray
    raw: str = ""


class ScoreLabeler(abc.ABC):
    """Scores each transition of a window of frames 0-10 against a goal (RG-VLM); knows nothing of RL.

    Subclasses implement :meth:`score`. It may raise: :class:`WindowScorer` retries, then stops the run,
    keeping every answer already committed.
    """

    #: Windows handed to one :meth:`score` call. Backends that parallelise take more.
    batch_size: int = 1
    #: Changes whenever the prompt changes, so stored scores for an older prompt are not reused.
    prompt_version: str = "none"
    # Named in the label store, and released, as preference labelers are.
    labeler_id = Labeler.labeler_id
    close = Labeler.close

    @abc.abstractmethod
    def score(self, windows: Sequence[Window], goal: str) -> List[WindowScores]:
        """Return one :class:`WindowScores` per window, in order."""


class ChatScoreLabeler(ScoreLabeler):
    """RG-VLM's window query to a chat VLM, sent through a preference :class:`ChatLabeler`'s backend.

    Two-stage: the VLM sees the window's frames and actions and describes how each action moves the
    task forward; then, text only, it scores each action 0-10 given that analysis. Single-stage: it
    scores next to the frames. Scores that cannot be read are NaN, with the raw text kept.

    :param chat: a :class:`~vlm_reward_wrappers.labelers.LlamaCppLabeler` or
        :class:`~vlm_reward_wrappers.labelers.OpenAICompatibleLabeler`; its requests, image layout, image
        size and concurrency are used.
    :param action_description: what an action means, in words, e.g. "a horizontal force on the cart, from
        -1 (push left) to 1 (push right)"; VLMs read raw numbers poorly without it.
    :param two_stage: RG-VLM's analysis-then-scores query (True) or the scores alone; None: as ``chat``.
    :param max_analysis_tokens: token limit of the stage-1 analysis (every action needs its sentences).
    :param max_tokens_per_score: answer tokens allowed per action ("Action 4: 7.5" and a line break).
    """

    def __init__(
        self,
        chat: ChatLabeler,
        action_description: Optional[str] = None,
        two_stage: Optional[bool] = None,
        max_analysis_tokens: int = 512,
        max_tokens_per_score: int = 10,
    ) -> None:
        self.chat = chat
        self.action_description = action_description
        self.two_stage = chat.two_stage if two_stage is None else two_stage
        self.max_analysis_tokens = max_analysis_tokens
        self.max_tokens_per_score = max_tokens_per_score
        self.batch_size = chat.batch_size
        self.prompt_version = score_prompt_version(self.two_stage)

    @property
    def labeler_id(self) -> str:
        return f"ChatScoreLabeler({self.chat.labeler_id}, action_description={self.action_description!r})"

    def score(self, windows: Sequence[Window], goal: str) -> List[WindowScores]:
        if self.batch_size <= 1 or len(windows) <= 1:
            return [self.ask(window, goal) for window in windows]
        pool = ThreadPoolExecutor(min(self.batch_size, len(windows)), thread_name_prefix="vlm-request")
        try:
            return list(pool.map(self.ask, windows, [goal] * len(windows)))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def ask(self, window: Window, goal: str) -> WindowScores:
        """Both stages (or the single one) for one window."""
        chat, n = self.chat, len(window)
        urls = [frame_to_data_uri(frame, chat.image_size) for frame in window.frames]
        max_tokens = self.max_tokens_per_score * n + 8
        analysis = ""
        if self.two_stage:
            question = progress_prompt(goal, window.actions, self.action_description)
            analysis = chat.chat(image_messages(urls, question, chat.layout), self.max_analysis_tokens)
            messages = text_messages(score_prompt(goal, window.actions, analysis, self.action_description))
        else:
            messages = image_messages(urls, single_stage_score_prompt(goal, window.actions, self.action_description),
                                      chat.layout)
        text = chat.chat(messages, max_tokens)
        return WindowScores(parse_scores(text, n), raw_text(analysis, text))

    def close(self) -> None:
        self.chat.close()


class OracleScoreLabeler(ScoreLabeler):
    """Scores transitions from their true reward: the simulated teacher of tests and benchmarks.

    score = 10 (r - low) / (high - low), clipped to [0, 10], plus Gaussian noise, clipped again. Each
    window's randomness is seeded by its content, so a resumed run scores as an uninterrupted one.

    :param reward_range: (low, high) true reward mapped to scores 0 and 10
        (:attr:`OfflineDataset.gt_reward_range` gives a dataset's).
    :param noise_std: standard deviation of the noise, in score points.
    :param unreadable_rate: probability that a window's answer cannot be read (all its scores NaN), as
        happens with small VLMs.
    :param seed: seed of the teacher's randomness.
    """

    batch_size = 64

    def __init__(
        self,
        reward_range: Tuple[float, float],
        noise_std: float = 0.0,
        unreadable_rate: float = 0.0,
        seed: int = 0,
    ) -> None:
        low, high = map(float, reward_range)
        if not high > low:
            raise ValueError(f"reward_range must be (low, high) with high > low, got {reward_range}")
        self.reward_range = (low, high)
        self.noise_std = noise_std
        self.unreadable_rate = unreadable_rate
        self.seed = seed

    @property
    def labeler_id(self) -> str:
        return (
            f"OracleScoreLabeler(reward_range={self.reward_range}, noise_std={self.noise_std}, "
            f"unreadable_rate={self.unreadable_rate}, seed={self.seed})"
        )

    def score(self, windows: Sequence[Window], goal: str) -> List[WindowScores]:
        return [self._score(window) for window in windows]

    def _score(self, window: Window) -> WindowScores:
        gt = np.asarray(window.gt_rewards, dtype=np.float64)
        if np.isnan(gt).any():
            raise ValueError("OracleScoreLabeler needs the true reward of every transition")
        rng = np.random.default_rng([self.seed, int(frame_hash(window.frames)[:12], 16)])
        if rng.random() < self.unreadable_rate:
            return WindowScores(np.full(len(gt), np.nan), raw="unreadable")
        low, high = self.reward_range
        scores = np.clip(MAX_SCORE * (gt - low) / (high - low), 0, MAX_SCORE)
        if self.noise_std:
            scores = np.clip(scores + rng.normal(0.0, self.noise_std, len(gt)), 0, MAX_SCORE)
        return WindowScores(scores, raw="\n".join(f"Action {k}: {s:.2f}" for k, s in enumerate(scores, start=1)))


@dataclass
class _PendingWindow:
    window: Window
    key: str
    frame_hashes: List[str]
    actions: str
    episode: int
    start: int


class WindowScorer:
    """RG-VLM on a fixed dataset: every transition scored 0-10 by a :class:`ScoreLabeler`, in windows.

    Windows tile each episode without overlap (its last may be shorter). Each answer is committed to
    the label store before it is used, and a window found there (same frames, actions, goal, labeler
    and prompt) is not sent, so an interrupted run resumes where it stopped and sends no answered
    query again. A labeler call that raises is retried ``max_retries`` times with exponential backoff,
    then the error propagates: the run stops and nothing answered is lost.

    :param labeler: scores the windows.
    :param goal: text description of the task.
    :param label_store: where answers are committed; an in-memory store (no resume) by default.
    :param window_size: transitions per window; W + 1 frames are shown (4: five frames, which a small
        VLM's context still takes).
    :param max_retries: retries of a failed labeler call before the run stops.
    :param retry_backoff_s: first retry delay; it doubles on each retry.
    """

    def __init__(
        self,
        labeler: ScoreLabeler,
        goal: str,
        label_store: Optional[LabelStore] = None,
        window_size: int = 4,
        max_retries: int = 2,
        retry_backoff_s: float = 1.0,
    ) -> None:
        check_goal(goal)
        if window_size < 1:
            raise ValueError(f"window_size must be at least 1, got {window_size}")
        self.labeler, self.goal = labeler, goal
        self.store = LabelStore() if label_store is None else label_store
        self.window_size = window_size
        self.max_retries, self.retry_backoff_s = max_retries, retry_backoff_s
        #: windows: seen; cached: answered from the store; sent: handed to the labeler (retries included);
        #: failed_calls: labeler calls that raised; transitions: scored or not; unscored: left NaN.
        self.counts = {"windows": 0, "cached": 0, "sent": 0, "failed_calls": 0, "transitions": 0, "unscored": 0}

    def score(self, dataset: OfflineDataset) -> List[np.ndarray]:
        """Score every transition: one (N_i,) float64 array per episode, in [0, 10] or NaN (unscored)."""
        labeler = self.labeler
        out = [np.full(len(episode), np.nan) for episode in dataset.episodes]
        total = sum(-(-len(episode) // self.window_size) for episode in dataset.episodes)
        pending: List[_PendingWindow] = []
        for index, episode in enumerate(dataset.episodes):
            for start in range(0, len(episode), self.window_size):
                window = episode.window(start, min(start + self.window_size, len(episode)))
                hashes, actions = [frame_hash(frame) for frame in window.frames], describe_actions(window.actions)
                key = window_hash(hashes, actions)
                self.counts["windows"] += 1
                record = self.store.lookup_scores(key, self.goal, labeler.labeler_id, labeler.prompt_version)
                if record is not None:
                    self.counts["cached"] += 1
                    out[index][start : start + len(window)] = record.scores
                    continue
                pending.append(_PendingWindow(window, key, hashes, actions, index, start))
                if len(pending) >= max(1, labeler.batch_size):
                    self._label(pending, out)
                    pending = []
                    logger.info("windows: %d of %d done, %d from the store", self.counts["windows"], total,
                                self.counts["cached"])
        if pending:
            self._label(pending, out)
        self.counts["transitions"] = dataset.total_steps
        self.counts["unscored"] = int(sum(np.isnan(scores).sum() for scores in out))
        return out

    def _label(self, pending: List[_PendingWindow], out: List[np.ndarray]) -> None:
        labeler = self.labeler
        windows = [item.window for item in pending]
        # After its retries the error stops the run: everything answered so far is in the store.
        answers, seconds = call_with_retries(
            lambda: labeler.score(windows, self.goal), len(windows), labeler.labeler_id, self.max_retries,
            self.retry_backoff_s, self.counts,
        )
        latency = seconds / len(windows)
        for item, answer in zip(pending, answers):
            scores = np.asarray(answer.scores, dtype=np.float64)
            if scores.shape != (len(item.window),):
                scores = np.full(len(item.window), np.nan)  # a malformed answer scores nothing, like garbage text
            self.store.add_scores(ScoreRecord(
                item.key, tuple(item.frame_hashes), item.actions, self.goal, labeler.labeler_id,
                labeler.prompt_version, tuple(scores), answer.raw, latency,
            ))
            out[item.episode][item.start : item.start + len(scores)] = scores

    @property
    def metrics(self) -> Dict[str, float]:
        """Windows seen, answered from the store and sent; failed calls; transitions and unscored ones."""
        return dict(self.counts)


def fill_unscored(scores: Sequence[np.ndarray], fill: Optional[float] = None) -> List[np.ndarray]:
    """Scores with every NaN (a transition whose answer could not be read) replaced.

    :param fill: the value to put in; None puts the mean of all scored transitions, which says
        neither "progress" nor "none" (0 where nothing was scored).
    """
    scored = np.concatenate([np.asarray(s, dtype=np.float64) for s in scores])
    if fill is None:
        fill = float(np.nanmean(scored)) if np.isfinite(scored).any() else 0.0
    return [np.where(np.isnan(s), fill, s) for s in scores]


def mix_rewards(
    dataset: OfflineDataset, vlm_rewards: Sequence[np.ndarray], weight: float = 1.0, add_dataset_reward: bool = False
) -> List[np.ndarray]:
    """The rewards to write: ``weight * vlm_reward``, or ``dataset_reward + weight * vlm_reward``.

    :param vlm_rewards: one (N_i,) array per episode (scores or reward-model rewards), without NaN.
    :param weight: scale of the VLM reward.
    :param add_dataset_reward: add the dataset's own (usually sparse) reward, as RG-VLM's auxiliary use.
    :return: one (N_i,) float64 array per episode.
    """
    return [
        (episode.rewards if add_dataset_reward else 0.0) + weight * np.asarray(vlm, dtype=np.float64)
        for episode, vlm in zip(dataset.episodes, vlm_rewards)
    ]


def true_reward_correlation(dataset: OfflineDataset, rewards: Sequence[np.ndarray]) -> float:
    """Pearson correlation of per-transition rewards with the true reward (NaN if either is constant)."""
    values, gt = np.concatenate(rewards), dataset.gt_rewards
    valid = np.isfinite(values) & np.isfinite(gt)
    if valid.sum() < 2 or values[valid].std() == 0 or gt[valid].std() == 0:
        return float("nan")
    return float(np.corrcoef(values[valid], gt[valid])[0, 1])


# ------------------------------------------------------------------------------ RL-VLM-F offline
class PreferenceRelabeler:
    """RL-VLM-F on a fixed dataset: preferences between its frames, a reward model, new rewards.

    The frame each transition ends in is resized to the reward model's input (what the wrappers
    reward online); pairs of these are drawn by ``sampler`` (seeded: a rerun draws the same pairs and
    finds their answers in the label store) and labelled through a
    :class:`~vlm_reward_wrappers.learner.LabelWorker` (answers committed first, failed calls retried,
    then dropped and counted). The :class:`RewardModel` ensemble is trained once on all of them with the
    Bradley-Terry loss, and every transition's reward is its normalised reward.

    Defaults are RL-VLM-F's CartPole settings (50 epochs, ensemble of 3, 64 pairs a batch).

    :param labeler: answers preference queries (a VLM, CLIP or the simulated teacher).
    :param goal: text description of the task.
    :param label_store: where answers are committed; an in-memory store (no resume) by default.
    :param n_queries: the feedback budget: pairs to draw.
    :param image_size: side of the frames shown and of the reward model's input, in pixels.
    :param sampler: pair selection, "uniform" (RL-VLM-F), "disagreement" or "entropy".
    :param ensemble_size: reward-model members.
    :param epochs: training epochs over all labels (stops early at ``early_stop_accuracy``).
    :param lr: Adam learning rate.
    :param batch_size: pairs per gradient step.
    :param early_stop_accuracy: stop training once train accuracy reaches this.
    :param max_retries: retries of a failed labeler call before its queries are dropped.
    :param retry_backoff_s: first retry delay; it doubles on each retry.
    :param seed: seed of pair sampling, weights and shuffles.
    """

    def __init__(
        self,
        labeler: Labeler,
        goal: str,
        label_store: Optional[LabelStore] = None,
        n_queries: int = 2000,
        image_size: int = 64,
        sampler: Union[str, PairSampler] = "uniform",
        ensemble_size: int = 3,
        epochs: int = 50,
        lr: float = 3e-4,
        batch_size: int = 64,
        early_stop_accuracy: float = 0.97,
        max_retries: int = 2,
        retry_backoff_s: float = 1.0,
        seed: int = 0,
    ) -> None:
        check_goal(goal)
        self.labeler, self.goal = labeler, goal
        self.store = LabelStore() if label_store is None else label_store
        self.n_queries, self.image_size = n_queries, image_size
        self.sampler = make_sampler(sampler)
        self.reward_model = RewardModel("frame", (image_size, image_size, 3), ensemble_size=ensemble_size, seed=seed)
        self.trainer = BradleyTerryTrainer(self.reward_model, lr=lr, batch_size=batch_size, epochs=epochs,
                                           early_stop_accuracy=early_stop_accuracy, seed=seed)
        self.worker = LabelWorker(labeler, goal, self.store, max_retries, retry_backoff_s, asynchronous=False)
        self.seed = seed
        self._stats: Dict[str, float] = {}

    def relabel(self, dataset: OfflineDataset) -> List[np.ndarray]:
        """Label, train, and return each transition's reward: one (N_i,) float32 array per episode."""
        sizes = [len(episode) for episode in dataset.episodes]
        buffer = FrameBuffer(sum(sizes), (self.image_size, self.image_size, 3))
        for index, episode in enumerate(dataset.episodes):
            frames = np.stack([resize_frame(frame, self.image_size) for frame in episode.frames[1:]])
            buffer.add(frames, episode.gt_rewards, np.full(len(episode), index), np.arange(len(episode)))
        a, b = self.sampler.select(buffer, self.reward_model, self.n_queries, np.random.default_rng(self.seed))
        preferences = PreferenceDataset()
        compared = correct = no_preference = 0
        for start in range(0, len(a), 64):  # in chunks, to log progress through a slow labeler
            items = [
                PendingQuery(Query(buffer.frames[i], buffer.frames[j], buffer.gt_rewards[i], buffer.gt_rewards[j]),
                             frame_hash(buffer.frames[i]), frame_hash(buffer.frames[j]))
                for i, j in zip(a[start : start + 64], b[start : start + 64])
            ]
            self.worker.submit(items)
            for item, record in self.worker.poll():
                no_preference += record.preference == -1
                preferences.add(item.input_a, item.input_b, record.preference, record.soft)
                gt_a, gt_b = item.query.gt_reward_a, item.query.gt_reward_b
                if record.preference != -1 and np.isfinite(gt_a) and np.isfinite(gt_b) and gt_a != gt_b:
                    compared += 1
                    correct += int(record.preference == int(gt_b > gt_a))
            logger.info("preferences: %d of %d queries answered", min(start + 64, len(a)), len(a))
        if len(preferences) == 0:
            raise ValueError(
                f"none of {len(a)} queries gave a usable preference ({self.worker.counts['dropped']} dropped after "
                f"failures, {no_preference} answered -1): no reward model can be trained"
            )
        stats = self.trainer.train(preferences)
        rewards = self.reward_model.fit_normalization(buffer.frames)  # the buffer holds exactly the dataset
        self._stats = {
            "queries": len(a), "labels_used": len(preferences), "no_preference": no_preference,
            "label_accuracy": correct / compared if compared else float("nan"),
            "reward_model/accuracy": stats.accuracy, "reward_model/epochs": stats.epochs,
        }
        return list(np.split(rewards, np.cumsum(sizes)[:-1]))

    @property
    def metrics(self) -> Dict[str, float]:
        """Queries drawn, sent and answered from the store, labels used, label accuracy, training figures."""
        counts = self.worker.counts
        return {**self._stats, "queries_sent": counts["sent"], "queries_cached": counts["cached"],
                "queries_dropped": counts["dropped"], "labeler_failures": counts["failed_calls"]}
