"""RL Baselines3 Zoo: a run through Zoo's own entry point with the learned reward, and the config it reads."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("rl_zoo3", reason="needs RL Zoo: pip install -e '.[zoo]'")

from vlm_reward_wrappers import RelabelingReplayBuffer  # noqa: E402
from vlm_reward_wrappers.label_store import LabelStore  # noqa: E402
from vlm_reward_wrappers.zoo import learned_reward_hyperparams, make_labeler_by_name  # noqa: E402


def test_config_keeps_zoos_tuned_hyperparameters_and_adds_the_learned_reward():
    sac = learned_reward_hyperparams("sac", "Pendulum-v1", labeler="oracle", feedback_budget=40)
    assert sac["learning_rate"] == 1e-3 and sac["n_timesteps"] == 20000  # Zoo's tuned Pendulum SAC
    assert sac["env_kwargs"] == {"render_mode": "rgb_array"}
    assert sac["replay_buffer_class"] is RelabelingReplayBuffer
    (wrapper,) = sac["vec_env_wrapper"]
    assert wrapper["vlm_reward_wrappers.zoo.learned_reward"]["feedback_budget"] == 40
    assert sac["callback"] == ["vlm_reward_wrappers.VLMMetricsCallback"]
    ppo = learned_reward_hyperparams("ppo", "Pendulum-v1")
    assert ppo["n_envs"] == 4 and ppo["use_sde"] is True  # Zoo's tuned Pendulum PPO, kept
    assert "replay_buffer_class" not in ppo  # on-policy: rewards are never relabelled
    with pytest.raises(ValueError, match="no tuned sac hyperparameters for 'vlmrw/CartPoleAngle-v0'.*base="):
        learned_reward_hyperparams("sac", "vlmrw/CartPoleAngle-v0")
    own = learned_reward_hyperparams("sac", "vlmrw/CartPoleAngle-v0", base={"n_timesteps": 5000, "policy": "MlpPolicy"})
    assert own["n_timesteps"] == 5000 and own["replay_buffer_class"] is RelabelingReplayBuffer


def test_labelers_are_named_as_on_the_command_line():
    assert type(make_labeler_by_name("simulated-vlm", target_accuracy=0.8)).__name__ == "SimulatedVLMLabeler"
    with pytest.raises(ValueError, match="unknown labeler options \\['accuracy'\\]"):
        make_labeler_by_name("simulated-vlm", accuracy=0.8)


def test_without_zoo_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "rl_zoo3", None)
    with pytest.raises(ImportError, match=r"pip install 'vlm-reward-wrappers\[zoo\]'"):
        learned_reward_hyperparams("sac", "Pendulum-v1")


@pytest.mark.slow
def test_zoo_trains_sac_on_the_learned_reward_through_its_own_entry_point(tmp_path):
    store = tmp_path / "labels.sqlite"
    config = tmp_path / "learned_reward.py"
    config.write_text(textwrap.dedent(f"""
        from vlm_reward_wrappers.zoo import learned_reward_hyperparams
        hyperparams = {{"Pendulum-v1": learned_reward_hyperparams(
            "sac", "Pendulum-v1", labeler="oracle", seed_steps=200, query_every=200, pairs_per_query=10,
            feedback_budget=20, epochs_per_update=5, label_store={str(store)!r})}}
    """))
    logs = tmp_path / "logs"
    run = subprocess.run(
        [sys.executable, "-m", "rl_zoo3.train", "--algo", "sac", "--env", "Pendulum-v1", "--conf-file", str(config),
         "-n", "600", "--eval-freq", "400", "--eval-episodes", "2", "-f", str(logs), "--seed", "0",
         "--log-interval", "1"],
        capture_output=True, text=True, timeout=540, cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    # The learner's figures reach Zoo's logger through the callback entry.
    assert "labels_used" in run.stdout and "reward_model/version" in run.stdout
    labels = LabelStore(str(store))
    assert len(labels.records("to swing the pendulum up so it stands upright")) == 20  # labels paid for are kept
    labels.close()
    run_dir = logs / "sac" / "Pendulum-v1_1"
    assert (run_dir / "Pendulum-v1.zip").exists()
    # Zoo's evaluation ran on an env without the learned reward: its returns are Pendulum's true ones.
    evaluations = np.load(run_dir / "evaluations.npz")["results"]
    assert evaluations.shape == (1, 2) and (-2000 < evaluations).all() and (evaluations < 0).all()
