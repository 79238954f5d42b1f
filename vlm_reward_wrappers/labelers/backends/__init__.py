"""Chat backends: send OpenAI-style messages (text and images) to a vision-language model, get text back.

A backend knows no prompt and no protocol; :mod:`~vlm_reward_wrappers.labelers.preference` (pairwise
preferences) and :mod:`~vlm_reward_wrappers.labelers.scores` (RG-VLM window scores) ask their
questions through any of them. Each backend imports its client library on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from vlm_reward_wrappers.labelers.backends.base import LAYOUTS, ChatBackend, frame_to_data_uri

#: Public backends and the module that defines each.
_LAZY = {"LlamaCppBackend": "llama_cpp", "OpenAICompatibleBackend": "openai_api"}

__all__ = ["LAYOUTS", "ChatBackend", "frame_to_data_uri", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
