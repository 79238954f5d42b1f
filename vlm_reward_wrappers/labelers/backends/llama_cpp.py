"""LlamaCppBackend: a local GGUF vision-language model through llama-cpp-python (``[llama]`` extra)."""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from vlm_reward_wrappers.labelers.backends.base import ChatBackend
from vlm_reward_wrappers.labelers.base import LabelerRefusedError

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


def _import_llama_cpp():
    try:
        import llama_cpp
        import llama_cpp.llama_chat_format  # noqa: F401
        import llama_cpp.mtmd_cpp  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "LlamaCppBackend needs llama-cpp-python: pip install 'vlm-reward-wrappers[llama]' "
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


class _EndWhenClosing:
    """A logits processor that leaves only the end-of-sequence token once ``closing`` is set, so a
    generation in flight ends at its next token (llama.cpp has no other way to stop one)."""

    def __init__(self, closing: threading.Event, eos: int) -> None:
        self.closing, self.eos = closing, eos

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if self.closing.is_set():
            ended = np.full_like(scores, -np.inf)
            ended[self.eos] = 0.0
            return ended
        return scores


def _logsumexp(values: np.ndarray) -> float:
    peak = float(values.max())
    return peak + float(np.log(np.exp(values - peak).sum()))


class LlamaCppBackend(ChatBackend):
    """A local GGUF VLM through ``llama_cpp.Llama`` and a multimodal chat handler.

    One model runs one request at a time (``max_concurrency`` 1) and re-encodes every image on each
    call, so a two-image query takes seconds to minutes on a CPU (docs/labelers.md); run several in
    parallel behind a server and :class:`~vlm_reward_wrappers.labelers.backends.OpenAICompatibleBackend`.

    :param model_path: the language model's GGUF file.
    :param mmproj_path: its vision projector's GGUF file ("mmproj-...gguf").
    :param chat_handler: "auto" (the model file's own chat template if it has one, else LLaVA-1.5's),
        or a name from :data:`CHAT_HANDLERS`. All but "mtmd" and "gemma4" are the LLaVA-1.5 family,
        whose templates put a message's images before its text: they get the "captioned" layout,
        so each "Image k" stays beside its image.
    :param n_ctx: context length in tokens; all images' tokens and the analysis must fit.
    :param n_threads: CPU threads for generation (None: half the cores).
    :param n_threads_batch: CPU threads for prompt and image evaluation (None: all cores).
    :param n_gpu_layers: layers offloaded to a GPU build of llama.cpp (-1: all).
    :param query_image_size: longer side in pixels of the images sent. Encoders that tile large images
        (SmolVLM) spend their image tokens by size, so this caps them: 512 gives SmolVLM 64 tokens.
    :param verbose: llama.cpp's and libmtmd's own logs.
    :param llama_kwargs: further ``llama_cpp.Llama`` arguments (``flash_attn``, ``n_batch``, ...).
    """

    max_concurrency = 1

    def __init__(
        self,
        model_path: Union[str, Path],
        mmproj_path: Union[str, Path],
        chat_handler: str = "auto",
        n_ctx: int = 4096,
        n_threads: Optional[int] = None,
        n_threads_batch: Optional[int] = None,
        n_gpu_layers: int = 0,
        query_image_size: Optional[int] = None,
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
        super().__init__("interleaved" if in_order else "captioned", query_image_size)
        self._choice_tokens: Dict[Tuple[str, ...], Dict[str, np.ndarray]] = {}
        # One llama.cpp context runs one sequence: calls from several threads take turns.
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._end_when_closing = _EndWhenClosing(self._closing, self.llama.token_eos())

    @property
    def backend_id(self) -> str:
        return (
            f"LlamaCppBackend({Path(self.model_path).name}, {Path(self.mmproj_path).name}, "
            f"handler={self.chat_handler_name}, query_image_size={self.query_image_size})"
        )

    def chat(self, messages: List[Dict], max_tokens: int, logits_processor: Optional[list] = None) -> str:
        with self._lock:
            if self._closing.is_set():
                raise LabelerRefusedError("the llama.cpp backend is closed")
            response = self.llama.create_chat_completion(
                messages=messages, temperature=0.0, max_tokens=max_tokens,
                logits_processor=[*(logits_processor or []), self._end_when_closing],
                # The answer digits appear in the instructions; a repeat penalty would bias against them.
                repeat_penalty=1.0,
            )
        return response["choices"][0]["message"]["content"] or ""

    def choice_probabilities(self, messages: List[Dict], choices: Sequence[str]) -> Dict[str, float]:
        """From the logits of the first generated token: the mass of the tokens that start each choice.

        A choice with no token of its own (one that only starts others) is left out.
        """
        key = tuple(choices)
        if key not in self._choice_tokens:
            self._choice_tokens[key] = self._token_ids(key)
        recorder = _FirstLogits()
        self.chat(messages, 1, logits_processor=[recorder])
        mass = {choice: _logsumexp(recorder.logits[ids]) for choice, ids in self._choice_tokens[key].items()}
        log_z = _logsumexp(np.array(list(mass.values())))
        return {choice: float(np.exp(value - log_z)) for choice, value in mass.items()}

    def _token_ids(self, choices: Tuple[str, ...]) -> Dict[str, np.ndarray]:
        """Token ids that can start each choice ("0", " 0", ...), none shared between two choices."""
        candidates: Dict[str, set] = {}
        for choice in choices:
            ids = set()
            for variant in (choice, " " + choice, "\n" + choice):
                for token in self.llama.tokenize(variant.encode(), add_bos=False, special=False):
                    # Skip pieces that are only whitespace (SentencePiece's "▁"): they start every choice.
                    if self.llama.detokenize([token]).strip():
                        ids.add(token)
                        break
            candidates[choice] = ids
        shared = {t for a in candidates for b in candidates if a != b for t in candidates[a] & candidates[b]}
        ids = {choice: np.array(sorted(tokens - shared), dtype=np.int64) for choice, tokens in candidates.items()}
        if sum(1 for tokens in ids.values() if len(tokens)) < 2:
            raise ValueError(f"the vocabulary has tokens of their own for fewer than two of {list(choices)}")
        return {choice: tokens for choice, tokens in ids.items() if len(tokens)}

    def close(self) -> None:
        """Free the model: a generation in flight ends at its next token (an image being encoded is
        finished first, seconds on a CPU). Later calls do nothing."""
        self._closing.set()
        with self._lock:
            self.llama.close()
