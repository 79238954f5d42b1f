"""Reward-model training off the env loop: a copy trains on a snapshot of the labels, then its weights
are swapped into the model the env loop scores with."""

from __future__ import annotations

import threading
import time
from typing import Optional, Tuple

import numpy as np

from vlm_reward_wrappers.labels import PreferenceDataset
from vlm_reward_wrappers.reward_model import BradleyTerryTrainer, RewardModel, TrainStats


class BackgroundTrainer:
    """Keeps a training copy of a :class:`RewardModel` and updates the scoring model from it.

    :meth:`start` hands the copy a snapshot of the labels (and of the recent reward-model inputs its
    normalisation is fitted on) and returns at once; a background thread trains the copy from its
    current weights. :meth:`poll`, called from the env loop, swaps the trained weights and the new
    normalisation into the scoring model when they are ready and bumps its version: the only moment
    the scoring model changes, so inference never sees half-trained weights and never waits.

    :param model: the scoring model (read by the env loop, relabelling and pair selection).
    :param trainer: trains the copy; build it on ``model.clone()`` (see :meth:`for_model`).
    :param asynchronous: train on a background thread (True) or inside :meth:`start`, deterministically.
    """

    def __init__(self, model: RewardModel, trainer: BradleyTerryTrainer, asynchronous: bool = True) -> None:
        if trainer.model is model:
            raise ValueError("the trainer must train a copy of the scoring model (model.clone()), not the model itself")
        self.model, self.trainer, self.asynchronous = model, trainer, asynchronous
        self._thread: Optional[threading.Thread] = None
        self._result: Optional[TrainStats] = None
        self._predicted: Optional[np.ndarray] = None
        self._error: Optional[BaseException] = None
        #: CPU seconds spent training, all updates together (the training thread's own time).
        self.train_cpu_s = 0.0

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
        snapshot = dataset.snapshot()
        inputs = None if normalization_inputs is None else np.array(normalization_inputs)  # the ring buffer moves on
        self._result, self._predicted, self._error = None, None, None
        self._thread = threading.Thread(target=self._train, args=(snapshot, inputs), name="vlm-reward-trainer",
                                        daemon=True)
        if self.asynchronous:
            self._thread.start()
        else:
            self._thread.run()

    def poll(self) -> Optional[Tuple[TrainStats, Optional[np.ndarray]]]:
        """Swap a finished update into the scoring model; return its figures and the normalised rewards
        of the inputs given to :meth:`start` (None without them), or None if no update finished."""
        if self._thread is None or (self.asynchronous and self._thread.is_alive()):
            return None
        self._thread = None
        if self._error is not None:
            raise RuntimeError("reward-model training failed") from self._error
        self.model.copy_weights_from(self.trainer.model)
        self.model.version += 1
        return self._result, self._predicted

    def wait(self, timeout: Optional[float] = None) -> Optional[Tuple[TrainStats, Optional[np.ndarray]]]:
        """Wait for a running update (at most ``timeout`` s) and swap it in; None if none finished."""
        if self._thread is not None and self.asynchronous:
            self._thread.join(timeout)
        return self.poll()

    def _train(self, dataset: PreferenceDataset, normalization_inputs: Optional[np.ndarray]) -> None:
        started = time.thread_time()  # CPU seconds of this thread alone (the env loop runs beside it)
        try:
            self._result = self.trainer.train(dataset)
            if normalization_inputs is not None and len(normalization_inputs) >= 2:
                self._predicted = self.trainer.model.fit_normalization(normalization_inputs)
        except BaseException as error:  # handed to poll(), on the env loop's thread
            self._error = error
        self.train_cpu_s += time.thread_time() - started
