"""SB3 callbacks: the learner's metrics, the true episode return, and pictures of the queries and the
learned reward, in SB3's logger."""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Figure, Image

from vlm_reward_wrappers.frames import resize_longer_side
from vlm_reward_wrappers.label_store import NO_PREFERENCE, LabelRecord
from vlm_reward_wrappers.learner import PreferenceLearner
from vlm_reward_wrappers.metrics import gt_preference, pearson

logger = logging.getLogger(__name__)

#: Only TensorBoard shows pictures; the text outputs would print their repr.
PICTURE_ONLY = ("stdout", "log", "json", "csv")
#: Border colours of a query's frames: the chosen one, green where the true reward agrees, red where it
#: does not, blue where it cannot tell; grey for both frames of an abstention.
CORRECT, WRONG, UNKNOWN, ABSTAINED = (46, 160, 67), (214, 39, 40), (31, 119, 180), (150, 150, 150)


def find_learner(source: Any) -> PreferenceLearner:
    """The learner of a wrapper (or of a VecEnv stack around one), or the learner itself."""
    if isinstance(source, PreferenceLearner):
        return source
    return find_reward_wrapper(source).learner


def find_reward_wrapper(source: Any) -> Any:
    """The VLMRewardWrapper or VLMRewardVecEnvWrapper in a stack of SB3 and Gymnasium wrappers (in a
    DummyVecEnv, its first env's stack)."""
    env = source
    while env is not None:
        if isinstance(getattr(env, "learner", None), PreferenceLearner):
            return env
        # A DummyVecEnv holds the envs SB3 wrapped a single env in; a SubprocVecEnv's are out of reach.
        env = getattr(env, "venv", None) or getattr(env, "env", None) or next(iter(getattr(env, "envs", ())), None)
    raise TypeError(
        f"no PreferenceLearner found in {type(source).__name__}: pass the VLMRewardWrapper, the "
        "VLMRewardVecEnvWrapper or their .learner"
    )


def _tile(frame: np.ndarray, size: int, colour: Optional[Tuple[int, int, int]], border: int = 4) -> np.ndarray:
    """``frame`` shrunk to fit ``size`` x ``size``, on a white tile framed in ``colour`` (or white)."""
    tile = np.full((size + 2 * border, size + 2 * border, 3), 255, dtype=np.uint8)
    if colour is not None:
        tile[:] = colour
        tile[border:-border, border:-border] = 255
    small = resize_longer_side(np.asarray(frame, dtype=np.uint8), size)
    top, left = border + (size - small.shape[0]) // 2, border + (size - small.shape[1]) // 2
    tile[top:top + small.shape[0], left:left + small.shape[1]] = small
    return tile


def answer_grid(answers: Sequence[Tuple[Any, LabelRecord]], size: int = 96) -> np.ndarray:
    """(H, W, 3) uint8 picture of answered queries, one row each: image 1, image 2, the chosen one
    framed (see :data:`CORRECT`)."""
    rows = []
    for query, record in answers:
        truth = gt_preference(query.gt_reward_a, query.gt_reward_b)
        if record.preference == NO_PREFERENCE:
            colours = [ABSTAINED, ABSTAINED]
        else:
            chosen = UNKNOWN if truth == NO_PREFERENCE else (CORRECT if truth == record.preference else WRONG)
            colours = [chosen if side == record.preference else None for side in (0, 1)]
        rows.append(np.concatenate([_tile(query.frame_a, size, colours[0]), _tile(query.frame_b, size, colours[1])], 1))
    return np.concatenate(rows, 0)


class VLMMetricsCallback(BaseCallback):
    """Records the learner's metrics (labels used, label accuracy, reward-model loss, ...) in SB3's
    logger under ``vlm/``, and the true return and length of recent episodes as
    ``vlm/gt_episode_return`` and ``vlm/gt_episode_length`` (SB3's Monitor sees only the learned
    reward), so they appear in its console output and TensorBoard.

    With ``log_pictures``, where the logger writes TensorBoard, it also sends it the latest answered queries as ``vlm/queries`` (an
    image: image 1 and image 2 per row, the chosen one framed green where the true reward agrees, red
    where it does not) and, for the first env's latest finished episode, the learned and true reward
    step by step as ``vlm/episode_rewards`` (a figure; needs matplotlib, the ``plot`` extra).

    :param env: the wrapper the algorithm trains on, or its learner; None: found in the model's env when
        training starts (as where the callback is built before the env, e.g. in RL Zoo's ``callback`` entry).
    :param window: episodes averaged, as SB3's ``stats_window_size``.
    :param log_pictures: log the query image and the reward figure (TensorBoard only).
    :param picture_every: the fewest env steps between two pictures of each kind.
    """

    def __init__(self, env: Any = None, window: int = 100, log_pictures: bool = True, picture_every: int = 2000,
                 verbose: int = 0) -> None:
        super().__init__(verbose)
        self.learner: Optional[PreferenceLearner] = None if env is None else find_learner(env)
        self.episodes: deque = deque(maxlen=window)
        self.log_pictures, self.picture_every = log_pictures, picture_every
        self._answers_shown = 0
        self._last_picture = {"queries": -picture_every, "rewards": -picture_every}
        self._episode: List[Tuple[float, float]] = []
        self._finished: Optional[np.ndarray] = None
        self._warned_matplotlib = False

    def _init_callback(self) -> None:
        if self.learner is None:
            self.learner = find_learner(self.model.get_env())

    def _on_step(self) -> bool:
        infos = self.locals.get("infos")
        assert infos is not None, "VLMMetricsCallback reads the step's infos from the algorithm's locals"
        self.episodes.extend(info["gt_episode"] for info in infos if "gt_episode" in info)
        if self.log_pictures and "gt_reward" in infos[0]:
            self._episode.append((float(np.asarray(self.locals["rewards"])[0]), float(infos[0]["gt_reward"])))
            if np.asarray(self.locals["dones"])[0]:
                self._finished, self._episode = np.array(self._episode), []
        return True

    def _on_rollout_end(self) -> None:
        for name, value in self.learner.metrics.items():
            self.logger.record(f"vlm/{name}", value)
        relabel_s = getattr(getattr(self.model, "replay_buffer", None), "relabel_s", None)
        if relabel_s is not None:  # RelabelingReplayBuffer's passes
            self.logger.record("vlm/cost/relabelling_s", relabel_s)
        if self.episodes:
            self.logger.record("vlm/gt_episode_return", float(np.mean([e["r"] for e in self.episodes])))
            self.logger.record("vlm/gt_episode_length", float(np.mean([e["l"] for e in self.episodes])))
        if self.log_pictures and self._tensorboard():
            self._log_queries()
            self._log_rewards()

    def _tensorboard(self) -> bool:
        """Whether the logger writes TensorBoard, the one output that shows pictures."""
        from stable_baselines3.common.logger import TensorBoardOutputFormat

        return any(isinstance(output, TensorBoardOutputFormat) for output in self.logger.output_formats)

    def _due(self, kind: str) -> bool:
        if self.num_timesteps - self._last_picture[kind] < self.picture_every:
            return False
        self._last_picture[kind] = self.num_timesteps
        return True

    def _log_queries(self) -> None:
        learner = self.learner
        if learner.answers_received == self._answers_shown or not learner.recent_answers or not self._due("queries"):
            return
        self._answers_shown = learner.answers_received
        self.logger.record("vlm/queries", Image(answer_grid(list(learner.recent_answers)), "HWC"), exclude=PICTURE_ONLY)

    def _log_rewards(self) -> None:
        if self._finished is None or not self._due("rewards"):
            return
        try:
            from matplotlib.figure import Figure as MatplotlibFigure  # no pyplot: the user's backend is left alone
        except ImportError:
            if not self._warned_matplotlib:
                self._warned_matplotlib = True
                logger.warning("the learned-vs-true reward figure needs matplotlib: pip install "
                               "'vlm-reward-wrappers[plot]' (the query images are logged without it)")
            return
        learned, true = self._finished.T
        figure = MatplotlibFigure(figsize=(6, 3))
        left = figure.add_subplot()
        left.plot(learned, color="#1565c0", label="learned reward")
        left.set_xlabel("step of the episode")
        left.set_ylabel("learned reward", color="#1565c0")
        right = left.twinx()
        right.plot(true, color="#e65100", label="true reward")
        right.set_ylabel("true reward", color="#e65100")
        left.set_title(f"latest episode of env 0: correlation {pearson(learned, true):.2f}")
        figure.tight_layout()
        self.logger.record("vlm/episode_rewards", Figure(figure, close=True), exclude=PICTURE_ONLY)
        self._finished = None
