"""Where the time goes: every part of a learned reward's cost is measured and reaches SB3's logger."""

import time
import warnings

import pytest
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure

from conftest import GOAL
from vlm_reward_wrappers import (
    FrameInfoWrapper,
    OracleLabeler,
    RelabelingReplayBuffer,
    VLMMetricsCallback,
    VLMRewardVecEnvWrapper,
    VLMRewardWrapper,
)

SCHEDULE = dict(seed_steps=100, query_every=100, pairs_per_query=10, epochs_per_update=5, seed=0)


def _logged(tmp_path):
    import csv

    with open(tmp_path / "progress.csv") as f:
        return list(csv.DictReader(f))[-1]


def test_sac_logs_each_part_and_the_env_loop_parts_fit_in_the_run(cartpole, tmp_path):
    env = VLMRewardWrapper(cartpole, GOAL, OracleLabeler(), query_image_size=200, **SCHEDULE)
    model = SAC("MlpPolicy", env, replay_buffer_class=RelabelingReplayBuffer, learning_starts=100, seed=0)
    model.set_logger(configure(str(tmp_path), ["csv"]))
    started = time.perf_counter()
    model.learn(400, callback=VLMMetricsCallback(env), log_interval=1)
    wall_s = time.perf_counter() - started
    metrics = env.learner.metrics
    env.close()
    on_loop = [metrics[f"cost/{part}_s"] for part in ("render", "frame_prep", "scoring", "learner", "waiting")]
    assert all(seconds > 0 for seconds in on_loop) and sum(on_loop) < wall_s
    assert metrics["cost/training_s"] > 0 and model.replay_buffer.relabel_s > 0
    row = _logged(tmp_path)
    assert float(row["vlm/cost/relabelling_s"]) > 0 and float(row["vlm/cost/scoring_s"]) > 0


@pytest.mark.parametrize("frames_in_workers", [True, False])
def test_a_vecenv_counts_the_rendering_wherever_it_happens(frames_in_workers):
    venv = make_vec_env("vlmrw/CartPoleAngle-v0", n_envs=2, env_kwargs=dict(render_mode="rgb_array"), seed=0,
                        wrapper_class=FrameInfoWrapper if frames_in_workers else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # without FrameInfoWrapper: the terminal-frame warning, tested elsewhere
        env = VLMRewardVecEnvWrapper(venv, GOAL, OracleLabeler(), **SCHEDULE)
    PPO("MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=1, seed=0).learn(256)
    metrics = env.learner.metrics
    env.close()
    assert metrics["cost/render_s"] > 0 and metrics["cost/frame_prep_s"] > 0 and metrics["cost/scoring_s"] > 0
