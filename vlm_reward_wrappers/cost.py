"""Where a learned reward's time goes: seconds per part of the work, on the env loop and beside it."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Dict, Iterator

#: The env loop's parts, logged as ``vlm/cost/<part>_s``: ``render`` (``env.render()``, summed over
#: the envs; inside the workers under SubprocVecEnv), ``frame_prep`` (reward-model inputs and query frames
#: from rendered frames; where they are prepared in the worker process, handing them over and waiting),
#: ``scoring`` (the reward model's inference), ``learner`` (applying labels,
#: choosing pairs, swapping weights in) and ``waiting`` (the env loop waiting on an update: the first one,
#: and :meth:`~vlm_reward_wrappers.learner.PreferenceLearner.flush`). Beside it, on their own threads, the
#: trainer and the replay buffer time themselves: ``vlm/cost/training_s`` (reward-model updates) and
#: ``vlm/cost/relabelling_s`` (replay-buffer passes, logged by the callback from the algorithm's buffer).
PARTS = ("render", "frame_prep", "scoring", "learner", "waiting")


class CostMeter:
    """Wall-clock seconds spent in each of :data:`PARTS`, added up over a run."""

    def __init__(self) -> None:
        self.seconds: Dict[str, float] = dict.fromkeys(PARTS, 0.0)

    def add(self, part: str, seconds: float) -> None:
        self.seconds[part] += seconds

    @contextmanager
    def timing(self, part: str) -> Iterator[None]:
        """Add the seconds the ``with`` block takes to ``part``."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[part] += time.perf_counter() - started
