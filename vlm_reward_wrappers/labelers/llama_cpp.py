"""LlamaCppLabeler: a local GGUF vision-language model through llama-cpp-python (``[llama]`` extra)."""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from vlm_reward_wrappers.labelers.base import FIRST, NO_PREFERENCE, SECOND, Answer, Query
from vlm_reward_wrappers.labelers.chat import ChatLabeler, raw_text

#: Chat handlers by the names llama-cpp-python's server gives them (``--chat_format``). "mtmd" uses
#: the chat template stored in the model file (SmolVLM, Gemma 3, Qwen2.5-VL and most recent VLMs).
CHAT_HANDLERS = {
    "mtmd": "MTMDChatHandler",
    "gemma4": "Gemma4ChatHandler",
    "llava-1-5": "Llava15ChatHandler",
    "llava-1-6": "Llava16ChatHandler",
    "obsidian": "ObsidianChatHandler",
    "moondream": "MoondreamChatHandler",
    "nanollava": "NanoLlavaChatHandler",
    "llama-3-vision-alpha": "Llama3VisionAlphaChatHandler",
    "minicpm-v-2.6": "MiniCPMv26ChatHandler",
    "qwen2.5-vl": "Qwen25VLChatHandler",
}

_DOWNLOAD_HINT = (
    "download a GGUF vision-language model and its projector, e.g. SmolVLM-500M-Instruct-Q8_0.gguf and "
    "mmproj-SmolVLM-500M-Instruct-Q8_0.gguf from huggingface.co/ggml-org/SmolVLM-500M-Instruct-GGUF, "
    "or Qwen2.5-VL-3B-Instruct-Q4_K_M.gguf and its mmproj from huggingface.co/ggml-org/Qwen2.5-VL-3B-Instruct-GGUF"
)

#: The answers whose probabilities make a soft label.
_ANSWERS = {"0": FIRST, "1": SECOND, "-1": NO_PREFERENCE}


def _import_llama_cpp():
    try:
        import llama_cpp
        import llama_cpp.llama_chat_format  # noqa: F401
        import llama_cpp.mtmd_cpp  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "LlamaCppLabeler needs llama-cpp-python: pip install 'vlm-reward-wrappers[llama]' "
            "(it builds llama.cpp from source; CMAKE_ARGS='-DGGML_CUDA=on' for a GPU build)"
        ) from error
    return llama_cpp


def _route_mtmd_logs() -> None:
    """Send libmtmd's logs through llama-cpp-python's callback, which drops them unless ``verbose``.

    Without this libmtmd prints every image's progress to stderr even with ``verbose=False``.
    """
    from llama_cpp import _logger, mtmd_cpp

    mtmd_cpp.mtmd_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    mtmd_cpp.mtmd_helper_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def _existing(path: Union[str, Path], what: str) -> str:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist: {_DOWNLOAD_HINT}")
    return str(path)


class _FirstLogits:
    """A llama-cpp-python logits processor that keeps the logits of the first generated token."""

    def __init__(self) -> None:
        self.logits: Optional[np.ndarray] = None

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if self.logits is None:
            self.logits = np.array(scores, dtype=np.float64)
        return scores


def _logsumexp(values: np.ndarray) -> float:
    peak = float(values.max())
    return peak + float(np.log(np.exp(values - peak).sum()))


class LlamaCppLabeler(ChatLabeler):
    """RL-VLM-F's preference query to a local GGUF VLM, through ``llama_cpp.Llama`` and a chat handler.

    One model runs one query at a time (``batch_size`` 1) and re-encodes both images on each call,
    so a query takes seconds to minutes on a CPU (see the README); run more in parallel with a
    server and :class:`~vlm_reward_wrappers.labelers.openai_api.OpenAICompatibleLabeler`.

    :param model_path: the language model's GGUF file.
    :param mmproj_path: its vision projector's GGUF file ("mmproj-...gguf").
    :param chat_handler: "auto" (the model file's own chat template if it has one, else LLaVA-1.5's),
        or a name from :data:`CHAT_HANDLERS`. All but "mtmd" and "gemma4" are the LLaVA-1.5 family,
        whose templates put a message's images before its text: they get the "captioned" layout,
        so each "Image k" stays beside its image.
    :param n_ctx: context length in tokens; both images' tokens and the analysis must fit.
    :param n_threads: CPU threads for generation (None: half the cores).
    :param n_threads_batch: CPU threads for prompt and image evaluation (None: all cores).
    :param n_gpu_layers: layers offloaded to a GPU build of llama.cpp (-1: all).
    :param image_size: longer side in pixels of the images sent. Encoders that tile large images
        (SmolVLM) spend their image tokens by size, so this caps them: 512 gives SmolVLM 64 tokens.
    :param two_stage: RL-VLM-F's analysis-then-answer query (True) or the answer alone.
    :param soft_labels: answer from the first answer token's probabilities: the preference is the
        likeliest of 0 / 1 / -1 and ``Answer.soft`` is P(1) / (P(0) + P(1)).
    :param max_analysis_tokens: token limit of the stage-1 analysis.
    :param max_answer_tokens: token limit of the answer line (1 with ``soft_labels``).
    :param verbose: llama.cpp's and libmtmd's own logs.
    :param llama_kwargs: further ``llama_cpp.Llama`` arguments (``flash_attn``, ``n_batch``, ...).
    """

    batch_size = 1

    def __init__(
        self,
        model_path: Union[str, Path],
        mmproj_path: Union[str, Path],
        chat_handler: str = "auto",
        n_ctx: int = 4096,
        n_threads: Optional[int] = None,
        n_threads_batch: Optional[int] = None,
        n_gpu_layers: int = 0,
        image_size: Optional[int] = None,
        two_stage: bool = True,
        soft_labels: bool = False,
        max_analysis_tokens: int = 256,
        max_answer_tokens: int = 16,
        verbose: bool = False,
        **llama_kwargs: Any,
    ) -> None:
        self.model_path = _existing(model_path, "VLM model file")
        self.mmproj_path = _existing(mmproj_path, "vision projector (mmproj) file")
        if chat_handler != "auto" and chat_handler not in CHAT_HANDLERS:
            raise ValueError(f"chat_handler must be 'auto' or one of {sorted(CHAT_HANDLERS)}, got {chat_handler!r}")
        llama_cpp = _import_llama_cpp()
        _route_mtmd_logs()
        self.llama = llama_cpp.Llama(
            self.model_path, n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads_batch,
            n_gpu_layers=n_gpu_layers, verbose=verbose, **llama_kwargs,
        )
        if chat_handler == "auto":
            chat_handler = "mtmd" if self.llama.metadata.get("tokenizer.chat_template") else "llava-1-5"
        self.chat_handler_name = chat_handler
        handler_cls = getattr(llama_cpp.llama_chat_format, CHAT_HANDLERS[chat_handler])
        self.chat_handler = handler_cls(clip_model_path=self.mmproj_path, verbose=verbose)
        self.llama.chat_handler = self.chat_handler
        # The LLaVA-1.5 family's templates put all images of a message before its text.
        in_order = isinstance(self.chat_handler, llama_cpp.llama_chat_format.MTMDChatHandler)
        super().__init__(
            two_stage=two_stage, layout="interleaved" if in_order else "captioned", image_size=image_size,
            max_analysis_tokens=max_analysis_tokens, max_answer_tokens=1 if soft_labels else max_answer_tokens,
        )
        self.soft_labels = soft_labels
        self._answer_tokens = self._answer_token_ids() if soft_labels else {}
        # One llama.cpp context runs one sequence: calls from several threads take turns.
        self._lock = threading.Lock()

    @property
    def labeler_id(self) -> str:
        return (
            f"LlamaCppLabeler({Path(self.model_path).name}, {Path(self.mmproj_path).name}, "
            f"handler={self.chat_handler_name}, image_size={self.image_size}, soft_labels={self.soft_labels})"
        )

    def label(self, queries: Sequence[Query], goal: str) -> List[Answer]:
        with self._lock:
            return [self.ask(query, goal) for query in queries]

    def chat(self, messages: List[Dict], max_tokens: int, logits_processor: Optional[list] = None) -> str:
        response = self.llama.create_chat_completion(
            messages=messages, temperature=0.0, max_tokens=max_tokens, logits_processor=logits_processor,
            # The answer digits appear in the instructions; a repeat penalty would bias against them.
            repeat_penalty=1.0,
        )
        return response["choices"][0]["message"]["content"] or ""

    def answer(self, messages: List[Dict], analysis: str) -> Answer:
        if not self.soft_labels:
            return super().answer(messages, analysis)
        recorder = _FirstLogits()
        text = self.chat(messages, 1, logits_processor=[recorder])
        logits = recorder.logits
        mass = {answer: _logsumexp(logits[ids]) for answer, ids in self._answer_tokens.items()}
        log_z = _logsumexp(np.array(list(mass.values())))
        probs = {answer: float(np.exp(value - log_z)) for answer, value in mass.items()}
        best = max(probs, key=probs.get)
        soft = probs["1"] / (probs["0"] + probs["1"])
        shown = ", ".join(f"p({answer})={p:.3f}" for answer, p in probs.items())
        return Answer(_ANSWERS[best], soft=soft, raw=raw_text(analysis, f"{text} ({shown})"))

    def _answer_token_ids(self) -> Dict[str, np.ndarray]:
        """Token ids that can start each answer ("0", " 0", ...), none shared between two answers."""
        candidates: Dict[str, set] = {}
        for answer in _ANSWERS:
            ids = set()
            for variant in (answer, " " + answer, "\n" + answer):
                for token in self.llama.tokenize(variant.encode(), add_bos=False, special=False):
                    # Skip pieces that are only whitespace (SentencePiece's "▁"): they start every answer.
                    if self.llama.detokenize([token]).strip():
                        ids.add(token)
                        break
            candidates[answer] = ids
        shared = {t for a in candidates for b in candidates if a != b for t in candidates[a] & candidates[b]}
        ids = {answer: np.array(sorted(tokens - shared), dtype=np.int64) for answer, tokens in candidates.items()}
        for answer in ("0", "1"):
            if not len(ids[answer]):
                raise ValueError(f"soft_labels: the vocabulary has no token of its own for the answer {answer!r}")
        return {answer: tokens for answer, tokens in ids.items() if len(tokens)}

    def close(self) -> None:
        with self._lock:
            self.llama.close()
