"""Fixed datasets for offline labelling: episodes with the frames a labeler sees, read from Minari, NumPy
arrays or an SB3 replay buffer, recorded from an env, and written back to Minari with new rewards.

Minari (``pip install 'vlm-reward-wrappers[offline]'``) is imported only when a dataset is read or written.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import gymnasium as gym
import numpy as np

from vlm_reward_wrappers.frames import resize_frame
from vlm_reward_wrappers.labelers.scores import Window
from vlm_reward_wrappers.label_store import check_frame

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
    env: gym.Env, policy: Callable[[Any], Any], n_episodes: int, frame_size: Optional[int] = 64, seed: int = 0
) -> OfflineDataset:
    """Roll out ``policy`` and keep what offline labelling needs, frames included.

    :param env: an env made with ``render_mode="rgb_array"``; its reward is kept as both the dataset's
        and the true reward (replace ``Episode.rewards`` to make a sparse dataset).
    :param policy: observation -> action.
    :param n_episodes: episodes to record; each runs until the env terminates or truncates it.
    :param frame_size: side of the square frames kept, in pixels (what a labeler will see and a reward
        model will read); None keeps them as rendered.
    :param seed: reset seed of the first episode (the next ones count up) and of the action space.
    """
    if env.render_mode != "rgb_array":
        raise ValueError(f"record_episodes needs an env made with render_mode='rgb_array', got {env.render_mode!r}")

    def frame() -> np.ndarray:
        rendered = env.render()
        return check_frame(rendered, "the rendered frame") if frame_size is None else resize_frame(rendered, frame_size)

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


