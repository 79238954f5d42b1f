"""vlm_reward_wrappers: train any SB3 agent on a reward learned from a VLM's preferences between frames."""

import os

# When a classic-control env first renders, pygame's SDL takes SIGTERM over and ignores it: a training run
# could then not be stopped by `kill` or a cluster scheduler's SIGTERM. SDL reads this hint when it starts.
os.environ.setdefault("SDL_NO_SIGNAL_HANDLERS", "1")

from vlm_reward_wrappers import envs  # noqa: F401  (registers the vlmrw/ env ids)
from vlm_reward_wrappers.callbacks import VLMMetricsCallback
from vlm_reward_wrappers.config import PRESETS, LearnerConfig
from vlm_reward_wrappers.frames import FrameBuffer
from vlm_reward_wrappers.labelers import (
    Answer,
    ChatPreferenceLabeler,
    HumanLabeler,
    Labeler,
    LlamaCppLabeler,
    OpenAICompatibleLabeler,
    OracleLabeler,
    Query,
    SimulatedVLMLabeler,
    SwapConsistentLabeler,
)
from vlm_reward_wrappers.labelling_service import LabellingService, RetryPolicy
from vlm_reward_wrappers.label_store import LabelStore
from vlm_reward_wrappers.preference_dataset import PreferenceDataset
from vlm_reward_wrappers.learner import PreferenceLearner
from vlm_reward_wrappers.replay import RelabelingReplayBuffer
from vlm_reward_wrappers.rollout import BatchScoringRolloutBuffer
from vlm_reward_wrappers.reward_model import BradleyTerryTrainer, RewardModel
from vlm_reward_wrappers.training import BackgroundTrainer
from vlm_reward_wrappers.sampling import DisagreementSampler, EntropySampler, PairSampler, UniformSampler
from vlm_reward_wrappers.wrappers import CLIPRewardWrapper, FrameInfoWrapper, VLMRewardVecEnvWrapper, VLMRewardWrapper

__version__ = "0.1.0"


def __getattr__(name: str):
    # open_clip is imported on first use, so that importing the package loads none of it.
    if name == "CLIPLabeler":
        from vlm_reward_wrappers.labelers.clip import CLIPLabeler

        return CLIPLabeler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PRESETS",
    "Answer",
    "BackgroundTrainer",
    "BatchScoringRolloutBuffer",
    "CLIPLabeler",
    "CLIPRewardWrapper",
    "ChatPreferenceLabeler",
    "BradleyTerryTrainer",
    "DisagreementSampler",
    "EntropySampler",
    "FrameBuffer",
    "FrameInfoWrapper",
    "HumanLabeler",
    "Labeler",
    "LearnerConfig",
    "LabelStore",
    "LabellingService",
    "LlamaCppLabeler",
    "OpenAICompatibleLabeler",
    "OracleLabeler",
    "PairSampler",
    "PreferenceDataset",
    "PreferenceLearner",
    "Query",
    "RelabelingReplayBuffer",
    "RetryPolicy",
    "RewardModel",
    "SimulatedVLMLabeler",
    "SwapConsistentLabeler",
    "UniformSampler",
    "VLMMetricsCallback",
    "VLMRewardVecEnvWrapper",
    "VLMRewardWrapper",
]
