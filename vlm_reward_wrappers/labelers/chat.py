"""ChatLabeler: RL-VLM-F's query (two frames, the goal, one-line answer) over any chat backend."""

from __future__ import annotations

import abc
from typing import Dict, List, Optional

from vlm_reward_wrappers.labelers.base import Answer, Labeler, Query
from vlm_reward_wrappers.labelers.prompts import (
    LAYOUTS,
    analysis_prompt,
    answer_prompt,
    frame_to_data_uri,
    image_messages,
    parse_preference,
    prompt_version,
    single_stage_prompt,
    text_messages,
)


class ChatLabeler(Labeler):
    """A labeler that asks a chat VLM; subclasses only send a chat request (:meth:`chat`).

    Two-stage (RL-VLM-F): the VLM sees both frames and writes an analysis of them against the goal;
    then, text only, it answers 0 / 1 / -1 given that analysis. Single-stage: it answers next to the
    frames. Answers that cannot be read are -1 with the raw text kept; a backend that cannot be
    reached raises, so the learner retries and counts the failure.

    :param two_stage: RL-VLM-F's two queries (True) or one.
    :param layout: "interleaved" or "captioned" placement of images and captions (see
        :mod:`~vlm_reward_wrappers.labelers.prompts`).
    :param image_size: longer side in pixels of the images sent; None sends frames as they are.
    :param max_analysis_tokens: token limit of the stage-1 analysis.
    :param max_answer_tokens: token limit of the one-line answer.
    """

    def __init__(
        self,
        two_stage: bool = True,
        layout: str = "interleaved",
        image_size: Optional[int] = None,
        max_analysis_tokens: int = 256,
        max_answer_tokens: int = 16,
    ) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.two_stage = two_stage
        self.layout = layout
        self.image_size = image_size
        self.max_analysis_tokens = max_analysis_tokens
        self.max_answer_tokens = max_answer_tokens
        self.prompt_version = prompt_version(two_stage)

    @abc.abstractmethod
    def chat(self, messages: List[Dict], max_tokens: int) -> str:
        """Send OpenAI-style chat messages at temperature 0 and return the reply's text.

        Raises when the backend fails (unreachable, overloaded, out of context).
        """

    def ask(self, query: Query, goal: str) -> Answer:
        """Both stages (or the single one) for one query."""
        urls = [frame_to_data_uri(frame, self.image_size) for frame in (query.frame_a, query.frame_b)]
        if self.two_stage:
            analysis = self.chat(image_messages(urls, analysis_prompt(goal), self.layout), self.max_analysis_tokens)
            return self.answer(text_messages(answer_prompt(goal, analysis)), analysis)
        return self.answer(image_messages(urls, single_stage_prompt(goal), self.layout), "")

    def answer(self, messages: List[Dict], analysis: str) -> Answer:
        """The one-line answer to ``messages``, parsed; ``analysis`` is stage 1's text ("" if none)."""
        text = self.chat(messages, self.max_answer_tokens)
        return Answer(parse_preference(text), raw=raw_text(analysis, text))


def raw_text(analysis: str, answer: str) -> str:
    """What the label store keeps of a query: stage 1's analysis, if any, then the answer line."""
    return f"{analysis}\n[answer] {answer}" if analysis else answer
