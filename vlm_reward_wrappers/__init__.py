"""vlm_reward_wrappers: train any SB3 agent on a reward learned from a VLM's preferences between frames."""

from vlm_reward_wrappers import envs  # noqa: F401  (registers the vlmrw/ env ids)
from vlm_reward_wrappers.callbacks import RelabelReplayBufferCallback, VLMMetricsCallback
from vlm_reward_wrappers.frames import FrameBuffer
from vlm_reward_wrappers.labelers import Answer, Labeler, OracleLabeler, Query
from vlm_reward_wrappers.labels import LabelStore, PreferenceDataset
from vlm_reward_wrappers.learner import PreferenceLearner
from vlm_reward_wrappers.reward_model import BradleyTerryTrainer, RewardModel
from vlm_reward_wrappers.sampling import DisagreementSampler, EntropySampler, PairSampler, UniformSampler
from vlm_reward_wrappers.wrappers import FrameInfoWrapper, VLMRewardVecEnvWrapper, VLMRewardWrapper

__version__ = "0.1.0"

#: Optional backends, imported on first use so that importing the package loads none of them.
_LAZY_LABELERS = ("LlamaCppLabeler", "OpenAICompatibleLabeler", "CLIPLabeler", "CLIPRewardWrapper")


def __getattr__(name: str):
    if name in _LAZY_LABELERS:
        from vlm_reward_wrappers import labelers

        return getattr(labelers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    *_LAZY_LABELERS,
    "Answer",
    "BradleyTerryTrainer",
    "DisagreementSampler",
    "EntropySampler",
    "FrameBuffer",
    "FrameInfoWrapper",
    "Labeler",
    "LabelStore",
    "OracleLabeler",
    "PairSampler",
    "PreferenceDataset",
    "PreferenceLearner",
    "Query",
    "RelabelReplayBufferCallback",
    "RewardModel",
    "UniformSampler",
    "VLMMetricsCallback",
    "VLMRewardVecEnvWrapper",
    "VLMRewardWrapper",
]
