"""RG-VLM's window-score protocol: each transition of a window of consecutive frames scored 0-10.

RG-VLM (arXiv 2504.08772) shows a VLM a window of frames of one episode and the actions taken between
them. Stage 1 asks how each action moves the task forward given the goal; stage 2 (text only) asks
for one 0-10 score per action. :class:`ChatScoreLabeler` asks this over any chat backend.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

import numpy as np

from vlm_reward_wrappers.labelers.backends.base import ChatBackend, UsesChatBackend
from vlm_reward_wrappers.labelers.base import BaseLabeler, check_answers, check_goal
from vlm_reward_wrappers.labelers.prompts import (
    image_messages,
    parse_scores,
    progress_prompt,
    raw_text,
    score_prompt,
    score_prompt_version,
    single_stage_score_prompt,
    text_messages,
)
from vlm_reward_wrappers.label_store import check_frame


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


class ScoreLabeler(BaseLabeler):
    """Scores each transition of a window of frames 0-10 against a goal (RG-VLM); knows nothing of RL.

    Subclasses implement :meth:`score_windows`; callers use :meth:`score`, which checks the windows
    and the answers.
    """

    def score(self, windows: Sequence[Window], goal: str) -> List[WindowScores]:
        """One :class:`WindowScores` per window, in order."""
        windows = list(windows)
        for window in windows:
            if not isinstance(window, Window):
                raise TypeError(f"a window query is a Window(frames, actions, gt_rewards), got {type(window).__name__}")
            for frame in window.frames:
                check_frame(frame, "a window's frame")
        return check_answers(self.score_windows(windows, check_goal(goal)), len(windows), WindowScores,
                             self.labeler_id)

    def answer(self, requests: Sequence[Any], goal: str) -> List[WindowScores]:
        return self.score(requests, goal)

    @abc.abstractmethod
    def score_windows(self, windows: Sequence[Window], goal: str) -> List[WindowScores]:
        """Return one :class:`WindowScores` per window, in order."""


class ChatScoreLabeler(UsesChatBackend, ScoreLabeler):
    """RG-VLM's window query to a chat VLM.

    Two-stage: the VLM sees the window's frames and actions and describes how each action moves the
    task forward; then, text only, it scores each action 0-10 given that analysis. Single-stage: it
    scores next to the frames. Scores that cannot be read are NaN, with the raw text kept.

    :param backend: sends the chat requests (:class:`~vlm_reward_wrappers.labelers.backends.LlamaCppBackend`,
        :class:`~vlm_reward_wrappers.labelers.backends.OpenAICompatibleBackend`).
    :param action_description: what an action means, in words, e.g. "a horizontal force on the cart, from
        -1 (push left) to 1 (push right)"; VLMs read raw numbers poorly without it.
    :param two_stage: RG-VLM's analysis-then-scores query (True) or the scores alone.
    :param max_analysis_tokens: token limit of the stage-1 analysis (every action needs its sentences).
    :param max_tokens_per_score: answer tokens allowed per action ("Action 4: 7.5" and a line break).
    """

    batch_size = 1

    def __init__(
        self,
        backend: ChatBackend,
        action_description: Optional[str] = None,
        two_stage: bool = True,
        max_analysis_tokens: int = 512,
        max_tokens_per_score: int = 10,
    ) -> None:
        UsesChatBackend.__init__(self, backend)
        self.action_description = action_description
        self.two_stage = two_stage
        self.max_analysis_tokens = max_analysis_tokens
        self.max_tokens_per_score = max_tokens_per_score
        self.prompt_version = score_prompt_version(two_stage)

    @property
    def labeler_id(self) -> str:
        return f"ChatScoreLabeler({self.backend.backend_id}, action_description={self.action_description!r})"

    def score_windows(self, windows: Sequence[Window], goal: str) -> List[WindowScores]:
        return [self.ask(window, goal) for window in windows]

    def ask(self, window: Window, goal: str) -> WindowScores:
        """Both stages (or the single one) for one window."""
        backend, n = self.backend, len(window)
        urls = [backend.image_url(frame) for frame in window.frames]
        analysis = ""
        if self.two_stage:
            question = progress_prompt(goal, window.actions, self.action_description)
            analysis = backend.chat(image_messages(urls, question, backend.layout), self.max_analysis_tokens)
            messages = text_messages(score_prompt(goal, window.actions, analysis, self.action_description))
        else:
            question = single_stage_score_prompt(goal, window.actions, self.action_description)
            messages = image_messages(urls, question, backend.layout)
        text = backend.chat(messages, self.max_tokens_per_score * n + 8)
        return WindowScores(parse_scores(text, n), raw_text(analysis, text))
