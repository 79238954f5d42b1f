"""TensorBoard pictures: the answered queries and the learned vs true reward of an episode."""

import numpy as np
from conftest import GOAL
from stable_baselines3 import PPO
from stable_baselines3.common.logger import configure

from vlm_reward_wrappers import OracleLabeler, VLMMetricsCallback, VLMRewardWrapper
from vlm_reward_wrappers.callbacks import ABSTAINED, CORRECT, UNKNOWN, WRONG, answer_grid
from vlm_reward_wrappers.labelers.base import Query
from vlm_reward_wrappers.label_store import LabelRecord


def _has(image, colour):
    return bool(np.all(image == np.array(colour, np.uint8), axis=-1).any())


def test_the_query_picture_frames_each_chosen_frame_by_whether_the_true_reward_agrees():
    frame = np.full((20, 30, 3), 255, np.uint8)

    def answered(preference, gt_a, gt_b):
        return Query(frame, frame, gt_a, gt_b), LabelRecord("a", "b", GOAL, "L", "v", preference)

    picture = answer_grid([answered(1, 0.0, 1.0)], size=32)
    assert picture.shape == (40, 80, 3) and _has(picture[:, 40:], CORRECT) and not _has(picture[:, :40], CORRECT)
    assert _has(answer_grid([answered(0, 0.0, 1.0)]), WRONG)
    assert _has(answer_grid([answered(0, float("nan"), 1.0)]), UNKNOWN)
    both = answer_grid([answered(-1, 0.0, 1.0)], size=32)
    assert _has(both[:, :40], ABSTAINED) and _has(both[:, 40:], ABSTAINED)
    assert answer_grid([answered(1, 0.0, 1.0)] * 3, size=32).shape == (120, 80, 3)


def test_queries_and_episode_rewards_reach_tensorboard(cartpole, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    env = VLMRewardWrapper(cartpole, goal=GOAL, labeler=OracleLabeler(), seed=0, seed_steps=64, query_every=64,
                           pairs_per_query=8, asynchronous=False)
    model = PPO("MlpPolicy", env, n_steps=128, batch_size=64, n_epochs=1, seed=0)
    model.set_logger(configure(str(tmp_path), ["tensorboard", "csv"]))
    model.learn(384, callback=VLMMetricsCallback(env, picture_every=0))
    env.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0}).Reload()
    assert {"vlm/queries", "vlm/episode_rewards"} <= set(events.Tags()["images"])
    queries = events.Images("vlm/queries")
    assert len(queries) >= 2  # one per batch of answers: pictures go on as the run does
    # The oracle is always right: 8 rows of 2 framed tiles of 96 + 2 x 4 pixels.
    assert (queries[-1].height, queries[-1].width) == (8 * 104, 2 * 104)
    # Pictures stay out of the text outputs.
    columns = open(tmp_path / "progress.csv").readline().strip().split(",")
    assert "vlm/labels_used" in columns and not {"vlm/queries", "vlm/episode_rewards"} & set(columns)


def test_without_tensorboard_no_picture_is_made_and_no_missing_extra_is_mentioned(cartpole, monkeypatch, caplog):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as on a machine without the plot extra
    env = VLMRewardWrapper(cartpole, goal=GOAL, labeler=OracleLabeler(), seed=0, seed_steps=64, query_every=64,
                           pairs_per_query=8, asynchronous=False)
    callback = VLMMetricsCallback(env, picture_every=0)
    PPO("MlpPolicy", env, n_steps=128, batch_size=64, n_epochs=1, seed=0).learn(256, callback=callback)
    env.close()
    assert "matplotlib" not in caplog.text and callback._finished is not None
    assert callback._last_picture == {"queries": 0, "rewards": 0}  # never due: nothing was drawn
