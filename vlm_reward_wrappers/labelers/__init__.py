"""Labelers: backends that answer which of two frames is closer to the goal.

The VLM and CLIP backends are imported on first use, so ``import vlm_reward_wrappers`` never loads
llama-cpp-python, open_clip or torchvision.
"""

from __future__ import annotations

import importlib
from typing import Any

from vlm_reward_wrappers.labelers.base import FIRST, NO_PREFERENCE, SECOND, Answer, Labeler, Query
from vlm_reward_wrappers.labelers.oracle import OracleLabeler

#: Public names of the optional backends and the module that defines each.
_LAZY = {
    "ChatLabeler": "chat",
    "LlamaCppLabeler": "llama_cpp",
    "OpenAICompatibleLabeler": "openai_api",
    "CLIPEmbedder": "clip",
    "CLIPLabeler": "clip",
    "CLIPRewardWrapper": "clip",
}

__all__ = ["FIRST", "NO_PREFERENCE", "SECOND", "Answer", "Labeler", "OracleLabeler", "Query", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
