"""Reward-model training off the env loop: a copy trains on a snapshot of the labels, then its weights
are swapped into the model the env loop scores with."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Dict, Optional, Tuple

import numpy as np

from vlm_reward_wrappers import lifecycle
from vlm_reward_wrappers.preference_dataset import PreferenceDataset
from vlm_reward_wrappers.reward_model import BradleyTerryTrainer, RewardModel, TrainStats, UpdateAbandoned

logger = logging.getLogger(__name__)


class BackgroundTrainer:
    """Keeps a training copy of a :class:`RewardModel` and updates the scoring model from it.

    :meth:`start` hands the copy a snapshot of the labels (and of the recent reward-model inputs its
    normalisation is fitted on) and returns at once; a background thread trains the copy from its
    current weights. :meth:`poll`, called from the env loop, swaps the trained weights and the new
    normalisation into the scoring model when they are ready and bumps its version: the only moment
    the scoring model changes, so inference never sees half-trained weights and never waits.

    An update that raises is logged (the first with its traceback), counted in :attr:`failures` and
    not swapped in; the next batch of labels starts another. ``max_failures`` updates failing in a
    row raise the last error on the env loop's thread, at the next :meth:`poll`: training that never
    happens does not go on silently.

    :param model: the scoring model (read by the env loop, relabelling and pair selection).
    :param trainer: trains the copy; build it on ``model.clone()`` (see :meth:`for_model`); kept as
        :attr:`bradley_terry`.
    :param asynchronous: train on a background thread (True) or inside :meth:`start`, deterministically.
    :param max_failures: updates failing in a row before the error is raised.
    """

    def __init__(
        self, model: RewardModel, trainer: BradleyTerryTrainer, asynchronous: bool = True, max_failures: int = 3,
    ) -> None:
        if trainer.model is model:
            raise ValueError("the trainer must train a copy of the scoring model (model.clone()), not the model itself")
        if max_failures < 1:
            raise ValueError(f"max_failures must be at least 1, got {max_failures}")
        self.model, self.bradley_terry, self.asynchronous = model, trainer, asynchronous
        self.max_failures = max_failures
        self._thread: Optional[threading.Thread] = None
        # Set when the update's thread has finished its work. Waits use it, not Thread.join: on Python
        # 3.11 a join interrupted by Ctrl-C marks a running thread stopped, and it would outlive close().
        self._done = threading.Event()
        self._result: Optional[TrainStats] = None
        self._predicted: Optional[np.ndarray] = None
        self._error: Optional[BaseException] = None
        self._stop = threading.Event()
        #: CPU seconds spent training, all updates together (the training thread's own time), and wall seconds.
        self.train_cpu_s = 0.0
        self.train_s = 0.0
        #: Updates that raised, all together; and in a row, up to the last one.
        self.failures = 0
        self._failures_in_a_row = 0

    @classmethod
    def for_model(cls, model: RewardModel, asynchronous: bool = True, **trainer_kwargs) -> "BackgroundTrainer":
        """A background trainer of a fresh copy of ``model``, with :class:`BradleyTerryTrainer` arguments."""
        return cls(model, BradleyTerryTrainer(model.clone(), **trainer_kwargs), asynchronous)

    @property
    def busy(self) -> bool:
        """An update is running or finished and not swapped in yet."""
        return self._thread is not None

    def start(self, dataset: PreferenceDataset, normalization_inputs: Optional[np.ndarray]) -> None:
        """Train the copy on ``dataset`` as it is now (later labels wait for the next update)."""
        if self.busy:
            raise RuntimeError("an update is already running: poll() until it is swapped in")
        if self._stop.is_set():
            raise RuntimeError("this trainer is closed: make a new one")
        snapshot = dataset.snapshot()
        inputs = None if normalization_inputs is None else np.array(normalization_inputs)  # the ring buffer moves on
        self._result, self._predicted, self._error = None, None, None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._train, args=(snapshot, inputs), name="vlm-reward-trainer",
                                        daemon=True)
        if self.asynchronous:
            lifecycle.track(self)
            self._thread.start()
        else:
            self._thread.run()

    def poll(self) -> Optional[Tuple[TrainStats, Optional[np.ndarray]]]:
        """Swap a finished update into the scoring model; return its figures and the normalised rewards
        of the inputs given to :meth:`start` (None without them), or None if no update finished."""
        if self._thread is None or not self._done.is_set():
            return None
        self._thread = None
        if self._error is not None:
            return self._failed(self._error)
        self._failures_in_a_row = 0
        self.model.copy_weights_from(self.bradley_terry.model)
        return self._result, self._predicted

    def wait(self, timeout: Optional[float] = None) -> Optional[Tuple[TrainStats, Optional[np.ndarray]]]:
        """Wait for a running update (at most ``timeout`` s) and swap it in; None if none finished."""
        if self._thread is not None:
            self._done.wait(timeout)
        return self.poll()

    def state_dict(self) -> Dict[str, Any]:
        """The training copy's weights and optimiser, and the training time spent."""
        return {"training_model": self.bradley_terry.model.state(),
                "optimizer": self.bradley_terry.optimizer.state_dict(), "train_cpu_s": self.train_cpu_s}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Go on from :meth:`state_dict` (no update may be running)."""
        if self.busy:
            raise RuntimeError("an update is running: wait() for it before loading a state")
        self.bradley_terry.model.net.load_state_dict(state["training_model"]["state_dict"])
        self.bradley_terry.optimizer.load_state_dict(state["optimizer"])
        self.train_cpu_s = state["train_cpu_s"]

    def close(self, timeout_s: float = 5.0) -> None:
        """Abandon the update in flight (it stops before its next gradient step, and is not swapped in)
        and wait for its thread to finish, at most ``timeout_s``. Later calls do nothing."""
        self._stop.set()
        if self._thread is not None and not self._done.wait(timeout_s):
            logger.warning("the reward-model update did not stop within %g s of close()", timeout_s)
        self._thread = None
        lifecycle.untrack(self)

    def _failed(self, error: BaseException) -> None:
        self.failures += 1
        self._failures_in_a_row += 1
        if self._failures_in_a_row >= self.max_failures:
            raise RuntimeError(f"reward-model training failed {self._failures_in_a_row} times in a row") from error
        if self.failures == 1:
            logger.error("a reward-model update failed; the model keeps its weights and the next batch of labels "
                         "trains again", exc_info=error)
        else:
            logger.warning("a reward-model update failed again (%d in a row): %r", self._failures_in_a_row, error)
        return None

    def _train(self, dataset: PreferenceDataset, normalization_inputs: Optional[np.ndarray]) -> None:
        started = time.thread_time()  # CPU seconds of this thread alone (the env loop runs beside it)
        wall_started = time.perf_counter()
        try:
            self._result = self.bradley_terry.train(dataset, stop=self._stop)
            if normalization_inputs is not None and len(normalization_inputs) >= 2 and not self._stop.is_set():
                self._predicted = self.bradley_terry.model.fit_normalization(normalization_inputs)
        except UpdateAbandoned:
            pass  # closing: nothing is swapped in
        except BaseException as error:  # handed to poll(), on the env loop's thread
            self._error = error
        self.train_cpu_s += time.thread_time() - started
        self.train_s += time.perf_counter() - wall_started
        self._done.set()
