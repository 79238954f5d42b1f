"""An SB3 replay buffer that keeps each transition's reward-model input and relabels every stored reward
when the reward model changes (PEBBLE's and RL-VLM-F's relabelling, where SB3 samples).

Pass it as ``replay_buffer_class`` of SAC, TD3 or DQN, as imitation's ReplayBufferRewardWrapper is::

    SAC("MlpPolicy", env, replay_buffer_class=RelabelingReplayBuffer)

The wrappers put each step's reward-model input in ``info``; the buffer stores it beside the
transition, in the slot SB3 writes the transition to, so rewards and inputs cannot drift apart.
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer

from vlm_reward_wrappers import lifecycle
from vlm_reward_wrappers.memory import refuse_unless_it_fits
from vlm_reward_wrappers.reward_model import RewardModel
from vlm_reward_wrappers.rollout import DEFERRED_KEY

#: Info key of a step's reward-model input (its frame, or its observation), put there by the wrappers.
REWARD_INPUT_KEY = "vlm_reward_input"
#: Info key naming the reward model that scored the step (a key of :func:`reward_model_for`).
REWARD_MODEL_KEY = "vlm_reward_model"

_MODELS: "weakref.WeakValueDictionary[int, RewardModel]" = weakref.WeakValueDictionary()


def register_reward_model(model: RewardModel) -> int:
    """The key under which a buffer finds ``model`` from a step's ``info`` (infos carry keys, not models)."""
    _MODELS[id(model)] = model
    return id(model)


def reward_model_for(key: int) -> Optional[RewardModel]:
    """The reward model registered under ``key``, if it is still alive in this process."""
    return _MODELS.get(key)


def check_memory(buffer_size: int, inputs: np.ndarray) -> None:
    """Refuse, before a run fills it hours later, a buffer whose reward-model inputs would not fit in the
    memory available now; ``inputs`` is one step's (n_envs, ...) array."""
    refuse_unless_it_fits(
        buffer_size, inputs.nbytes,
        f"RelabelingReplayBuffer keeps each transition's reward-model input ({inputs[0].nbytes / 1024:.0f} KB, shape "
        f"{inputs.shape[1:]}): {buffer_size:,} transitions of {len(inputs)} envs",
        lambda fits: f"pass the algorithm buffer_size={fits // 2:,} or less, a smaller reward_image_size, or "
                     "reward_input='observation'")


@dataclass
class _RelabelJob:
    """A relabelling pass running beside the training loop, on a snapshot of the reward model."""

    version: int
    size: int  # slots [0, size) are relabelled
    pos: int  # where the buffer wrote next when the pass started
    adds: int  # transitions added before the pass started
    thread: threading.Thread
    # Set when the pass has finished; waited on instead of Thread.join (see BackgroundTrainer).
    done: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)  # set: the pass ends at its next chunk
    rewards: Optional[np.ndarray] = None
    error: Optional[BaseException] = None


class RelabelingReplayBuffer(ReplayBuffer):
    """SB3's :class:`ReplayBuffer` that recomputes every stored reward with the current reward model.

    Each transition's reward-model input (a frame: 64 px are 12 KB; or an observation) is kept in an
    array grown as the buffer fills and never larger than it (set the algorithm's ``buffer_size`` to
    bound it). When the reward model's version has changed, :meth:`sample` starts relabelling the whole
    buffer, in batches of ``relabel_batch_size``, with a copy of that version.

    In the background (default), the pass runs in a thread and SB3 goes on sampling the rewards as they
    were until a later :meth:`sample` finds the pass done and takes its rewards in; slots written in
    the meantime keep the rewards their own steps were given. A pass over 15,000 frames takes seconds
    of CPU, which would otherwise stall training at every update. :meth:`finish_relabel` waits for it;
    :meth:`close` stops it (SB3 never closes a buffer: one left open is closed at interpreter exit).

    Arguments are SB3's, plus:

    :param relabel_batch_size: inputs per reward-model forward pass while relabelling.
    :param relabel_in_background: relabel beside training; False relabels inside :meth:`sample`.
    :param wrapper: the wrapped env the algorithm trains on (``replay_buffer_kwargs=dict(wrapper=env)``):
        its reward model is used, and the rewards it leaves to the buffer (``score_in_buffer=True``) are
        scored here, in one batch per :meth:`sample`, before they can be drawn. Pass it where you can.
        Without it the model is found from the steps' ``info`` (for frameworks that name the buffer's
        class before the env exists, such as RL Zoo's config files), and every reward is the one the
        step was given.
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: Union[torch.device, str] = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
        relabel_batch_size: int = 64,
        relabel_in_background: bool = True,
        wrapper: Any = None,
    ) -> None:
        super().__init__(buffer_size, observation_space, action_space, device, n_envs, optimize_memory_usage,
                         handle_timeout_termination)
        # Slots whose reward the wrapper left to this buffer and that are not scored yet; None until one is.
        self._unscored: Optional[np.ndarray] = None
        self._wrapper_model: Optional[RewardModel] = None
        if wrapper is not None:
            from vlm_reward_wrappers.callbacks import find_reward_wrapper  # callbacks imports the learner: late

            wrapper = find_reward_wrapper(wrapper)
            self._wrapper_model = wrapper.learner.reward_model
            if wrapper.deferred_rewards is not None:
                wrapper.deferred_rewards.claim("replay")
        self.relabel_batch_size = relabel_batch_size
        self.relabel_in_background = relabel_in_background
        self.reward_model: Optional[RewardModel] = None
        self.reward_inputs: Optional[np.ndarray] = None
        self._version: Optional[int] = None
        self._adds = 0
        self._job: Optional[_RelabelJob] = None
        #: Relabelling passes whose rewards were taken in, and the wall seconds of all passes.
        self.relabels = 0
        self.relabel_s = 0.0

    def __getstate__(self) -> dict:
        # SB3's save_replay_buffer pickles the buffer: the stored inputs go with it, the reward model does
        # not (a copy would go stale); the next add finds the live one again.
        state = dict(self.__dict__)
        state["reward_model"], state["_wrapper_model"], state["_version"], state["_job"] = None, None, None, None
        return state

    def add(self, obs, next_obs, action, reward, done, infos: List[Dict[str, Any]]) -> None:
        if self.reward_model is None:
            self.reward_model = self._wrapper_model or self._find_model(infos)
            if self._version is None and self.pos + self.full:  # loaded from a file: score it all anew
                self._version = -1
            else:
                self._version = self.reward_model.version
        inputs = np.stack([info[REWARD_INPUT_KEY] for info in infos])
        if self.reward_inputs is None:
            check_memory(self.buffer_size, inputs)
        if self.reward_inputs is None or self.pos >= len(self.reward_inputs):
            self._grow(inputs)
        self.reward_inputs[self.pos] = inputs
        deferred = np.array([info.get(DEFERRED_KEY, False) for info in infos])
        if deferred.any() or self._unscored is not None:
            if self._unscored is None:
                self._unscored = np.zeros((self.buffer_size, self.n_envs), dtype=bool)
            self._unscored[self.pos] = deferred
        super().add(obs, next_obs, action, reward, done, infos)
        self._adds += 1

    def sample(self, batch_size: int, env=None):
        if self.reward_model is not None:
            if self._job is not None and self._job.done.is_set():
                self._take_in(self._job)
            if self._job is None and self.reward_model.version != self._version:
                if self.relabel_in_background:
                    self._start_relabel()
                else:
                    self.relabel()
            if self._unscored is not None and self._unscored.any():
                self._score_new()
        return super().sample(batch_size, env)

    def _score_new(self) -> None:
        """Score the transitions the wrapper left to this buffer, all at once, with the current model."""
        slots, envs = np.nonzero(self._unscored)
        self.rewards[slots, envs] = self.reward_model.predict(self.reward_inputs[slots, envs], self.relabel_batch_size)
        self._unscored[slots, envs] = False

    def relabel(self) -> None:
        """Recompute every stored reward with the current reward model, now."""
        size = self.size()
        self._version = self.reward_model.version
        if size:
            self.rewards[:size] = self._scores(self.reward_model, size)
            self.relabels += 1
            if self._unscored is not None:
                self._unscored[:size] = False

    def finish_relabel(self) -> None:
        """Wait for a background pass and take its rewards in, then relabel now if the reward model has
        changed since it started: afterwards every stored reward is the current model's."""
        if self._job is not None:
            self._job.done.wait()
            self._take_in(self._job)
        if self.reward_model is not None and self.reward_model.version != self._version:
            self.relabel()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop a background pass (it ends after its current chunk of ``16 * relabel_batch_size`` inputs;
        its rewards are not taken in) and wait for its thread, at most ``timeout_s``. The buffer can still be sampled; a later
        change of the reward model starts a new pass."""
        job, self._job = self._job, None
        if job is not None:
            job.stop.set()
            job.done.wait(timeout_s)
        lifecycle.untrack(self)

    def _scores(self, model: RewardModel, size: int, stop: Optional[threading.Event] = None) -> Optional[np.ndarray]:
        """Rewards of slots [0, size), (size, n_envs); None if ``stop`` was set before they were all scored."""
        started = time.perf_counter()
        try:
            return self._score_chunks(model, size, stop)
        finally:
            self.relabel_s += time.perf_counter() - started

    def _score_chunks(self, model: RewardModel, size: int, stop: Optional[threading.Event]) -> Optional[np.ndarray]:
        inputs = self.reward_inputs[:size]
        flat = inputs.reshape(-1, *inputs.shape[2:])
        # In chunks of a few batches, so that a pass stops within a fraction of a second of close().
        chunk = 16 * self.relabel_batch_size
        rewards = np.empty(len(flat), dtype=np.float32)
        for start in range(0, len(flat), chunk):
            if stop is not None and stop.is_set():
                return None
            rewards[start : start + chunk] = model.predict(flat[start : start + chunk], self.relabel_batch_size)
        return rewards.reshape(size, self.n_envs)

    def _start_relabel(self) -> None:
        size = self.size()
        # A copy: the wrapper swaps new weights into the live model, which must not happen mid-pass.
        snapshot = self.reward_model.clone()

        def run() -> None:
            try:
                job.rewards = self._scores(snapshot, size, job.stop)
            except BaseException as error:  # raised again where the main thread takes the pass in
                job.error = error
            job.done.set()

        job = _RelabelJob(snapshot.version, size, self.pos, self._adds,
                          threading.Thread(target=run, name="vlm-relabel", daemon=True))
        self._job = job
        lifecycle.track(self)
        job.thread.start()

    def _take_in(self, job: _RelabelJob) -> None:
        self._job = None
        if job.error is not None:
            raise RuntimeError("relabelling the replay buffer failed") from job.error
        keep = np.ones(job.size, dtype=bool)
        written = self._adds - job.adds
        if written >= self.buffer_size:
            keep[:] = False
        else:  # slots the ring buffer overwrote since: their steps' own rewards stay
            overwritten = (job.pos + np.arange(written)) % self.buffer_size
            keep[overwritten[overwritten < job.size]] = False
        self.rewards[: job.size][keep] = job.rewards[keep]
        if self._unscored is not None:
            self._unscored[: job.size][keep] = False
        self._version = job.version
        self.relabels += 1

    def _grow(self, inputs: np.ndarray) -> None:
        old = 0 if self.reward_inputs is None else len(self.reward_inputs)
        # Uninitialised, as FrameBuffer's frames (only slots SB3 has written are read): no page-by-page faults.
        grown = np.empty((min(self.buffer_size, max(1024, 2 * old)), *inputs.shape), dtype=inputs.dtype)
        if old:
            grown[:old] = self.reward_inputs
        self.reward_inputs = grown

    @staticmethod
    def _find_model(infos: List[Dict[str, Any]]) -> RewardModel:
        key = infos[0].get(REWARD_MODEL_KEY)
        if key is None or REWARD_INPUT_KEY not in infos[0]:
            raise ValueError(
                "RelabelingReplayBuffer needs the env wrapped in VLMRewardWrapper or VLMRewardVecEnvWrapper, "
                "whose infos carry each step's reward-model input"
            )
        model = reward_model_for(key)
        if model is None:
            raise ValueError(
                "the reward model that scored these steps lives in another process: put VLMRewardWrapper "
                "outside SubprocVecEnv, or use VLMRewardVecEnvWrapper around it"
            )
        return model
