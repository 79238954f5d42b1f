"""Labelers: backends that answer which of two frames is closer to the goal."""

from vlm_reward_wrappers.labelers.base import FIRST, NO_PREFERENCE, SECOND, Answer, Labeler, Query
from vlm_reward_wrappers.labelers.oracle import OracleLabeler

__all__ = ["FIRST", "NO_PREFERENCE", "SECOND", "Answer", "Labeler", "OracleLabeler", "Query"]
