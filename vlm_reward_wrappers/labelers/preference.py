"""RL-VLM-F's pairwise preference query over any chat backend.

:class:`ChatPreferenceLabeler` builds the prompts and parses the answers; the backend
(:mod:`~vlm_reward_wrappers.labelers.backends`) only sends them. :class:`LlamaCppLabeler` and
:class:`OpenAICompatibleLabeler` are the same labeler with its backend built from their arguments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

from vlm_reward_wrappers.labelers.backends.base import ChatBackend, UsesChatBackend
from vlm_reward_wrappers.labelers.base import Answer, Labeler, Query
from vlm_reward_wrappers.labelers.prompts import (
    analysis_prompt,
    answer_prompt,
    image_messages,
    parse_preference,
    prompt_version,
    raw_text,
    single_stage_prompt,
    text_messages,
)
from vlm_reward_wrappers.label_store import FIRST, NO_PREFERENCE, SECOND

#: The answers whose probabilities make a soft label.
_CHOICES = {"0": FIRST, "1": SECOND, "-1": NO_PREFERENCE}


class ChatPreferenceLabeler(UsesChatBackend, Labeler):
    """Asks a chat VLM which of two frames is closer to the goal (RL-VLM-F).

    Two-stage (RL-VLM-F): the VLM sees both frames and writes an analysis of them against the goal;
    then, text only, it answers 0 / 1 / -1 given that analysis. Single-stage: it answers next to the
    frames. Answers that cannot be read are -1 with the raw text kept; a backend that cannot be
    reached raises, and the labelling service retries and counts the failure.

    :param backend: sends the chat requests (:class:`~vlm_reward_wrappers.labelers.backends.LlamaCppBackend`,
        :class:`~vlm_reward_wrappers.labelers.backends.OpenAICompatibleBackend`, or your own).
    :param two_stage: RL-VLM-F's two queries (True) or one (about half the cost).
    :param soft_labels: answer from the probabilities of the answer's first token (backends that report
        them): the preference is the likeliest of 0 / 1 / -1 and ``Answer.soft`` is P(1) / (P(0) + P(1)).
    :param max_analysis_tokens: token limit of the stage-1 analysis.
    :param max_answer_tokens: token limit of the one-line answer.
    """

    batch_size = 1

    def __init__(
        self,
        backend: ChatBackend,
        two_stage: bool = True,
        soft_labels: bool = False,
        max_analysis_tokens: int = 256,
        max_answer_tokens: int = 16,
    ) -> None:
        UsesChatBackend.__init__(self, backend)
        self.two_stage = two_stage
        self.soft_labels = soft_labels
        self.max_analysis_tokens = max_analysis_tokens
        self.max_answer_tokens = max_answer_tokens
        self.prompt_version = prompt_version(two_stage)

    @property
    def labeler_id(self) -> str:
        return f"ChatPreferenceLabeler({self.backend.backend_id}, soft_labels={self.soft_labels})"

    def compare(self, queries: Sequence[Query], goal: str) -> List[Answer]:
        return [self.ask(query, goal) for query in queries]

    def ask(self, query: Query, goal: str) -> Answer:
        """Both stages (or the single one) for one query."""
        backend = self.backend
        urls = [backend.image_url(frame) for frame in (query.frame_a, query.frame_b)]
        if not self.two_stage:
            return self._answer(image_messages(urls, single_stage_prompt(goal), backend.layout), "")
        analysis = backend.chat(image_messages(urls, analysis_prompt(goal), backend.layout), self.max_analysis_tokens)
        return self._answer(text_messages(answer_prompt(goal, analysis)), analysis)

    def _answer(self, messages: List[Dict], analysis: str) -> Answer:
        """The one-line answer to ``messages``; ``analysis`` is stage 1's text ("" if none)."""
        if not self.soft_labels:
            text = self.backend.chat(messages, self.max_answer_tokens)
            return Answer(parse_preference(text), raw=raw_text(analysis, text))
        probs = self.backend.choice_probabilities(messages, tuple(_CHOICES))
        if "0" not in probs or "1" not in probs:
            raise ValueError(f"soft_labels: the backend gave no probability for the answers 0 and 1, only {sorted(probs)}")
        best = max(probs, key=probs.get)
        shown = ", ".join(f"p({choice})={p:.3f}" for choice, p in probs.items())
        return Answer(_CHOICES[best], soft=probs["1"] / (probs["0"] + probs["1"]), raw=raw_text(analysis, shown))


class LlamaCppLabeler(ChatPreferenceLabeler):
    """:class:`ChatPreferenceLabeler` over a local GGUF VLM (:class:`~vlm_reward_wrappers.labelers.backends.LlamaCppBackend`).

    :param model_path: the language model's GGUF file.
    :param mmproj_path: its vision projector's GGUF file.
    :param two_stage: RL-VLM-F's analysis-then-answer query (True) or the answer alone.
    :param soft_labels: answer from the first answer token's probabilities.
    :param max_analysis_tokens: token limit of the stage-1 analysis.
    :param max_answer_tokens: token limit of the answer line.
    :param backend_kwargs: the backend's arguments: ``query_image_size``, ``n_gpu_layers``, ``chat_handler``,
        ``n_ctx``, ``n_threads``, ...
    """

    def __init__(
        self,
        model_path: Union[str, Path],
        mmproj_path: Union[str, Path],
        two_stage: bool = True,
        soft_labels: bool = False,
        max_analysis_tokens: int = 256,
        max_answer_tokens: int = 16,
        **backend_kwargs: Any,
    ) -> None:
        from vlm_reward_wrappers.labelers.backends.llama_cpp import LlamaCppBackend

        super().__init__(LlamaCppBackend(model_path, mmproj_path, **backend_kwargs), two_stage, soft_labels,
                         max_analysis_tokens, max_answer_tokens)


class OpenAICompatibleLabeler(ChatPreferenceLabeler):
    """:class:`ChatPreferenceLabeler` over a chat-completions server
    (:class:`~vlm_reward_wrappers.labelers.backends.OpenAICompatibleBackend`).

    :param base_url: the API root, e.g. "http://127.0.0.1:8000/v1".
    :param model: the model name the server knows.
    :param two_stage: RL-VLM-F's analysis-then-answer query (True) or the answer alone.
    :param max_analysis_tokens: token limit of the stage-1 analysis.
    :param max_answer_tokens: token limit of the answer line.
    :param backend_kwargs: the backend's arguments: ``max_concurrency``, ``timeout_s``, ``api_key_env``,
        ``query_image_size``, ``layout``, ``extra_body``.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        two_stage: bool = True,
        max_analysis_tokens: int = 256,
        max_answer_tokens: int = 16,
        **backend_kwargs: Any,
    ) -> None:
        from vlm_reward_wrappers.labelers.backends.openai_api import OpenAICompatibleBackend

        super().__init__(OpenAICompatibleBackend(base_url, model, **backend_kwargs), two_stage, False,
                         max_analysis_tokens, max_answer_tokens)
