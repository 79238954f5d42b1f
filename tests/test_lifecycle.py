"""A run ends cleanly: real scripts in their own processes exit 0 whether or not they close the wrapper,
even with a reward-model update or a relabelling pass running at exit, and Ctrl-C or SIGTERM stops a
run in seconds with every answer received in the label store. pytest's own process never exits between
tests, so only subprocesses can show what a user's script does at its end."""

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import GOAL
from fakes import FakeLabeler
from vlm_reward_wrappers import (
    BackgroundTrainer,
    BradleyTerryTrainer,
    LabelStore,
    OracleLabeler,
    PreferenceDataset,
    Query,
    RewardModel,
)
from vlm_reward_wrappers import lifecycle
from vlm_reward_wrappers.labelling_service import LabellingService, PreferenceJob, RetryPolicy

ENV = {**os.environ, "SDL_VIDEODRIVER": "dummy", "MUJOCO_GL": "egl", "PYTHONUNBUFFERED": "1"}

PREAMBLE = f"""
import json, sys, threading
import gymnasium as gym
import torch
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import SubprocVecEnv
from vlm_reward_wrappers import (FrameInfoWrapper, LabelStore, OracleLabeler, RelabelingReplayBuffer,
                                 VLMRewardVecEnvWrapper, VLMRewardWrapper)
torch.set_num_threads(1)
GOAL = {GOAL!r}
"""

#: The README's example, with the algorithm, the step count and the ending chosen by the arguments.
README_EXAMPLE = PREAMBLE + """
algo, steps, ending = sys.argv[1], int(sys.argv[2]), sys.argv[3]
env = gym.make("vlmrw/CartPoleAngle-v0", render_mode="rgb_array")
env = VLMRewardWrapper(env, goal=GOAL, labeler=OracleLabeler(), config="quick", seed=0)
if algo == "PPO":
    PPO("MlpPolicy", env, n_steps=256, seed=0).learn(steps)
else:
    SAC("MlpPolicy", env, replay_buffer_class=RelabelingReplayBuffer, replay_buffer_kwargs=dict(wrapper=env),
        seed=0).learn(steps)
if ending == "update-running":  # a long update starts just before the script ends
    trainer = env.learner.trainer
    trainer.wait()
    trainer.bradley_terry.epochs, trainer.bradley_terry.early_stop_accuracy = 100_000, 2.0
    trainer.start(env.learner.dataset, None)
    print("update running:", trainer.busy, flush=True)
elif ending == "close":
    env.close()
    print("threads after close:", json.dumps(sorted(t.name for t in threading.enumerate())), flush=True)
"""

VEC_EXAMPLE = PREAMBLE + """
if __name__ == "__main__":
    venv = make_vec_env("vlmrw/CartPoleAngle-v0", n_envs=2, vec_env_cls=SubprocVecEnv, wrapper_class=FrameInfoWrapper,
                        env_kwargs=dict(render_mode="rgb_array"), seed=0)
    venv = VLMRewardVecEnvWrapper(venv, goal=GOAL, labeler=OracleLabeler(), config="quick", seed=0)
    PPO("MlpPolicy", venv, n_steps=128, seed=0).learn(1500)
    if sys.argv[1] == "close":
        venv.close()
"""

#: A labeler that answers as the oracle in 2 s a call and fails every other call, writing to a file store.
SLOW_LABELER_RUN = PREAMBLE + f"""
import itertools
sys.path.insert(0, {str(Path(__file__).parent)!r})  # the shared fakes
from fakes import FakeLabeler

labeler = FakeLabeler(delay_s=2.0, errors=itertools.cycle([ConnectionError("the server dropped the connection"), None]),
                      batch_size=5, max_concurrency=2)
""" + """
env = gym.make("vlmrw/CartPoleAngle-v0", render_mode="rgb_array")
env = VLMRewardWrapper(env, goal=GOAL, labeler=labeler, config="quick", seed=0,
                       label_store=LabelStore(sys.argv[1]), seed_steps=100, query_every=200)
print("training", flush=True)
PPO("MlpPolicy", env, n_steps=256, seed=0).learn(100_000)
"""


def run_script(tmp_path: Path, source: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout,
                          env=ENV, cwd=tmp_path)


def assert_clean_exit(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit status {result.returncode}\n{result.stderr[-3000:]}"
    assert "terminate called" not in result.stderr and "Traceback" not in result.stderr, result.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("algo, steps", [("PPO", 1500), ("SAC", 800)])
@pytest.mark.parametrize("ending", ["close", "no-close", "update-running"])
def test_the_readme_example_exits_0_however_the_script_ends(tmp_path, algo, steps, ending):
    result = run_script(tmp_path, README_EXAMPLE, algo, str(steps), ending)
    assert_clean_exit(result)
    if ending == "update-running":
        assert "update running: True" in result.stdout
    if ending == "close":  # nothing of ours is left running once close() returns
        threads = json.loads(result.stdout.split("threads after close:")[1])
        assert not [name for name in threads if name.startswith("vlm-")], threads


@pytest.mark.slow
@pytest.mark.parametrize("ending", ["close", "no-close"])
def test_the_vectorised_example_over_subprocvecenv_exits_0(tmp_path, ending):
    assert_clean_exit(run_script(tmp_path, VEC_EXAMPLE, ending))


@pytest.mark.slow
def test_vlm_reward_train_exits_0(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "vlm_reward_wrappers.cli", "train", "--algo", "PPO", "--steps", "1500",
         "--eval-episodes", "1", "--json"], capture_output=True, text=True, timeout=300, env=ENV, cwd=tmp_path)
    assert_clean_exit(result)
    assert json.loads(result.stdout.strip().splitlines()[-1])["reward_model_updates"] >= 1


def _labels_in(path: Path) -> int:
    with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True) as db:
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'labels'").fetchone():
            return 0  # the file is there, its table not yet
        return db.execute("SELECT COUNT(*) FROM labels").fetchone()[0]


def _start_and_wait_for_labels(command, store: Path, min_labels: int = 5) -> subprocess.Popen:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                               cwd=store.parent)
    deadline = time.monotonic() + 240
    while not (store.exists() and _labels_in(store) >= min_labels):
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no label arrived within 240 s"
        time.sleep(0.2)
    return process


def _stop(process: subprocess.Popen, signum: int):
    sent = time.monotonic()
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    return time.monotonic() - sent, stderr


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_a_script_in_seconds_with_its_answers_in_the_store(tmp_path, signum):
    store = tmp_path / "labels.sqlite"
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(SLOW_LABELER_RUN))
    process = _start_and_wait_for_labels([sys.executable, str(script), str(store)], store)
    before = _labels_in(store)
    stopped_in_s, stderr = _stop(process, signum)
    assert stopped_in_s < 10, f"the run took {stopped_in_s:.1f} s to stop"
    assert process.returncode == -signum  # Ctrl-C ends the script as Python does; SIGTERM as the OS does
    assert "terminate called" not in stderr and "ProgrammingError" not in stderr, stderr[-3000:]
    assert _labels_in(store) >= before  # readable, and nothing that was in it is lost
    assert len(LabelStore(store).records(GOAL, OracleLabeler().labeler_id, OracleLabeler().prompt_version)) >= before


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_the_cli_stops_on_a_signal_with_one_line_and_its_labels_kept(tmp_path, signum):
    store = tmp_path / "labels.sqlite"
    command = [sys.executable, "-m", "vlm_reward_wrappers.cli", "train", "--algo", "PPO", "--steps", "1000000",
               "--seed-steps", "100", "--query-every", "200", "--label-store", str(store)]
    process = _start_and_wait_for_labels(command, store)
    before = _labels_in(store)
    stopped_in_s, stderr = _stop(process, signum)
    assert stopped_in_s < 10 and process.returncode == 130, (stopped_in_s, process.returncode, stderr[-3000:])
    assert "Traceback" not in stderr and "terminate called" not in stderr, stderr[-3000:]
    assert f"the labels answered so far are in {store}" in stderr.strip().splitlines()[-1]
    assert _labels_in(store) >= before


# ----------------------------------------------------------------------------------- in-process parts
def _jobs(n: int):
    rng = np.random.default_rng(0)
    return [PreferenceJob(Query(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8),
                                rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), float(i), float(i + 1)))
            for i in range(n)]


def test_close_commits_an_answer_arriving_within_its_grace_and_abandons_the_rest(caplog):
    store = LabelStore()
    service = LabellingService(FakeLabeler(delay_s=1.0, batch_size=1), GOAL, store, RetryPolicy(deadline_s=600))
    service.submit(_jobs(3))  # one call in flight, two queued
    time.sleep(0.2)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        service.close(timeout_s=5.0)
    assert time.monotonic() - started < 3  # the call in flight answers in about a second
    assert len(store.records(GOAL, service.labeler.labeler_id, service.labeler.prompt_version)) == 1 and service.counts["answered"] == 1  # committed, not lost
    assert service.counts["abandoned_at_close"] == 2 and service.counts["dropped"] == 2 and service.pending == 0
    assert "2 requests unanswered" in caplog.text
    assert not lifecycle.is_tracked(service)
    service.close()  # twice is harmless


def test_close_abandons_a_call_past_its_grace_without_waiting_for_the_deadline():
    store = LabelStore()
    service = LabellingService(FakeLabeler(delay_s=30.0, batch_size=1), GOAL, store, RetryPolicy(deadline_s=600))
    service.submit(_jobs(1))
    time.sleep(0.2)
    started = time.monotonic()
    service.close(timeout_s=0.5)
    assert time.monotonic() - started < 2
    assert not store.records(GOAL, service.labeler.labeler_id, service.labeler.prompt_version) and service.counts["abandoned_at_close"] == 1 and service.pending == 0
    assert not [t for t in threading.enumerate() if t.name.startswith("vlm-label_")]


def test_close_stops_retrying_a_failing_labeler_at_once():
    service = LabellingService(FakeLabeler(errors=ConnectionError("down")), GOAL, LabelStore(), RetryPolicy(max_retries=5, backoff_s=30, deadline_s=600))
    service.submit(_jobs(1))
    time.sleep(0.3)  # the first attempt failed: it is backing off for 30 s
    started = time.monotonic()
    service.close(timeout_s=5.0)
    assert time.monotonic() - started < 1 and service.counts["failed_calls"] == 1 and service.pending == 0


def _dataset(n: int = 64) -> PreferenceDataset:
    rng = np.random.default_rng(0)
    dataset = PreferenceDataset()
    for _ in range(n):
        dataset.add(rng.normal(size=4).astype(np.float32), rng.normal(size=4).astype(np.float32), int(rng.integers(2)))
    return dataset


def test_close_abandons_the_update_in_flight_within_a_gradient_step():
    model = RewardModel("observation", (4,), seed=0)
    trainer = BackgroundTrainer(model, BradleyTerryTrainer(model.clone(), epochs=1_000_000, early_stop_accuracy=2.0))
    trainer.start(_dataset(), None)
    time.sleep(0.3)
    assert trainer.busy and lifecycle.is_tracked(trainer)
    started = time.monotonic()
    trainer.close(timeout_s=5.0)
    assert time.monotonic() - started < 1
    assert not [t for t in threading.enumerate() if t.name == "vlm-reward-trainer"]
    assert model.version == 0 and not lifecycle.is_tracked(trainer)  # nothing half-trained swapped in
    trainer.close()
    with pytest.raises(RuntimeError, match="closed"):
        trainer.start(_dataset(), None)


class _FailingTrainer(BradleyTerryTrainer):
    def train(self, dataset, epochs=None, stop=None):
        raise FloatingPointError("loss is nan")


def test_a_failing_update_is_logged_once_counted_and_raised_after_three_in_a_row(caplog):
    model = RewardModel("observation", (4,), seed=0)
    trainer = BackgroundTrainer(model, _FailingTrainer(model.clone()))
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            trainer.start(_dataset(), None)
            assert trainer.wait(timeout=10) is None  # not swapped in, not raised: training goes on
    assert trainer.failures == 2 and model.version == 0
    assert caplog.text.count("Traceback") == 1 and "FloatingPointError" in caplog.text
    trainer.start(_dataset(), None)
    with pytest.raises(RuntimeError, match="failed 3 times in a row") as raised:
        trainer.wait(timeout=10)
    assert isinstance(raised.value.__cause__, FloatingPointError)
    trainer.close()


def test_closing_a_wrapper_twice_is_harmless_and_leaves_nothing_running(cartpole):
    from vlm_reward_wrappers import VLMRewardWrapper

    before = set(threading.enumerate())  # an earlier test's abandoned call may still be sleeping
    env = VLMRewardWrapper(cartpole, GOAL, OracleLabeler(), seed_steps=20, query_every=20, pairs_per_query=10,
                           query_image_size=200, seed=0)
    env.reset(seed=0)
    for _ in range(60):
        env.step(env.action_space.sample())
    env.close()
    env.close()
    assert not [t.name for t in set(threading.enumerate()) - before if t.name.startswith("vlm-")]
    assert env.learner.metrics["reward_model/updates"] >= 1
