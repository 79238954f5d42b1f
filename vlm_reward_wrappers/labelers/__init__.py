"""Labelers: protocols (pairwise preference, window scores) over backends (llama.cpp, servers), CLIP, and
simulated teachers.

The VLM and CLIP modules are imported on first use, so ``import vlm_reward_wrappers`` never loads
llama-cpp-python, open_clip or torchvision.
"""

from __future__ import annotations

import importlib
from typing import Any

from vlm_reward_wrappers.labelers.base import (
    FIRST,
    NO_PREFERENCE,
    SECOND,
    Answer,
    BaseLabeler,
    InvalidAnswerError,
    Labeler,
    LabelerError,
    LabelerRefusedError,
    LabelerUnavailableError,
    Query,
)
from vlm_reward_wrappers.labelers.human import HumanLabeler
from vlm_reward_wrappers.labelers.oracle import OracleLabeler, OracleScoreLabeler
from vlm_reward_wrappers.labelers.preference import ChatPreferenceLabeler, LlamaCppLabeler, OpenAICompatibleLabeler
from vlm_reward_wrappers.labelers.scores import ChatScoreLabeler, ScoreLabeler, Window, WindowScores
from vlm_reward_wrappers.labelers.simulated_vlm import SimulatedVLMLabeler
from vlm_reward_wrappers.labelers.swap import SwapConsistentLabeler

#: Public names of the optional backends and the module that defines each.
_LAZY = {
    "LlamaCppBackend": "backends.llama_cpp",
    "OpenAICompatibleBackend": "backends.openai_api",
    "CLIPEmbedder": "clip",
    "CLIPLabeler": "clip",
}

__all__ = [
    "FIRST", "NO_PREFERENCE", "SECOND", "Answer", "BaseLabeler", "ChatPreferenceLabeler", "ChatScoreLabeler",
    "HumanLabeler", "InvalidAnswerError", "Labeler", "LabelerError", "LabelerRefusedError", "LabelerUnavailableError",
    "LlamaCppLabeler", "OpenAICompatibleLabeler", "OracleLabeler", "OracleScoreLabeler", "Query", "ScoreLabeler",
    "SimulatedVLMLabeler", "SwapConsistentLabeler", "Window", "WindowScores", *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
