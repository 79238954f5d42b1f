"""Offline labelling: Minari in and out, RG-VLM window scores, the preference route, resume, the CLI."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("minari")

import minari  # noqa: E402

from conftest import GOAL  # noqa: E402
from fakes import FakeScoreLabeler  # noqa: E402
from offline_data import assert_same_data_but_rewards, cartpole_dataset, minari_home  # noqa: E402,F401  (autouse)
from vlm_reward_wrappers.cli import main  # noqa: E402
from vlm_reward_wrappers.labelers import (  # noqa: E402
    ChatScoreLabeler,
    OracleLabeler,
    OracleScoreLabeler,
    WindowScores,
)
from vlm_reward_wrappers.labelers.backends import ChatBackend  # noqa: E402
from vlm_reward_wrappers.labelling_service import RetryPolicy  # noqa: E402
from vlm_reward_wrappers.label_store import LabelStore  # noqa: E402
from vlm_reward_wrappers.offline import (  # noqa: E402
    OfflineDataset,
    PreferenceRelabeler,
    WindowScorer,
    fill_unscored,
    mix_rewards,
)

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------- scores
@pytest.mark.parametrize("add_dataset_reward", [False, True])
def test_scripted_labelling_end_to_end_writes_the_scores_and_keeps_the_data(add_dataset_reward):
    recorded = cartpole_dataset()
    recorded.to_minari("cartpole/sparse-v0", [e.rewards for e in recorded.episodes])
    source = minari.load_dataset("cartpole/sparse-v0")
    dataset = OfflineDataset.from_minari("cartpole/sparse-v0")
    labeler = OracleScoreLabeler(dataset.gt_reward_range)
    scores = WindowScorer(labeler, GOAL, window_size=4).score(dataset)
    rewards = mix_rewards(dataset, fill_unscored(scores), weight=0.1, add_dataset_reward=add_dataset_reward)
    out = dataset.to_minari("cartpole/scored-v0", rewards, description="RG-VLM scores")

    reloaded = minari.load_dataset("cartpole/scored-v0")
    assert_same_data_but_rewards(source, reloaded)
    assert reloaded.env_spec.id == "vlmrw/CartPoleAngle-v0" and "RG-VLM scores" in reloaded.storage.metadata["description"]
    assert out.total_steps == 30
    low, high = dataset.gt_reward_range
    for episode, written in zip(source.iterate_episodes(), reloaded.iterate_episodes()):
        expected = 10 * (episode.infos["gt_reward"][1:] - low) / (high - low)
        np.testing.assert_allclose(written.rewards, episode.rewards * add_dataset_reward + 0.1 * expected)


class ScriptedChat(ChatBackend):
    """A chat backend that records each request and answers from a script."""

    def __init__(self, replies, **kwargs):
        super().__init__(**kwargs)
        self.replies, self.requests = list(replies), []

    def chat(self, messages, max_tokens):
        self.requests.append((messages, max_tokens))
        return self.replies.pop(0)


def _parts(messages, kind):
    return [part for m in messages if isinstance(m["content"], list) for part in m["content"] if part["type"] == kind]


def test_chat_score_labeler_asks_both_stages_with_every_frame_and_action():
    dataset = cartpole_dataset(n_episodes=1, horizon=3)
    chat = ScriptedChat(["The cart moves; the pole rises.", "**Action 1**: 7\nAction 2: 3/10\nAction 3: 12"],
                        query_image_size=48)
    labeler = ChatScoreLabeler(chat, action_description="a force on the cart, from -1 (left) to 1 (right)")
    [answer] = labeler.score([dataset.episodes[0].window(0, 3)], GOAL)
    np.testing.assert_array_equal(answer.scores, [7, 3, np.nan])  # 12 is off the 0-10 scale
    (stage1, _), (stage2, tokens) = chat.requests
    assert len(_parts(stage1, "image_url")) == 4 and not _parts(stage2, "image_url")
    question = _parts(stage1, "text")[-1]["text"]
    assert "Action 3: [" in question and "from -1 (left) to 1 (right)" in question and GOAL in question
    assert "The cart moves; the pole rises." in stage2[0]["content"] and "Reply exactly 3 lines" in stage2[0]["content"]
    assert tokens >= 30 and answer.raw.startswith("The cart moves") and "[answer] **Action 1**: 7" in answer.raw
    assert labeler.prompt_version == "rgvlm-two-stage-v1" and "ScriptedChat" in labeler.labeler_id

    single = ChatScoreLabeler(ScriptedChat(["[4, 5, 6]"]), two_stage=False)
    [answer] = single.score([dataset.episodes[0].window(0, 3)], GOAL)
    assert list(answer.scores) == [4, 5, 6] and single.prompt_version == "rgvlm-single-stage-v1"


def test_unreadable_answers_are_counted_and_filled_never_raised():
    dataset = cartpole_dataset(n_episodes=2, horizon=6)
    garbage = FakeScoreLabeler(answers=lambda windows: [  # nothing readable: wrong lengths, NaN, text without scores
        WindowScores(np.array([5.0]) if i % 2 else np.full(len(w), np.nan), raw="ddd\u0246")
        for i, w in enumerate(windows)])
    scorer = WindowScorer(garbage, GOAL, window_size=2)
    scores = scorer.score(dataset)
    assert all(np.isnan(s).all() for s in scores)
    assert scorer.metrics["unscored"] == scorer.metrics["transitions"] == 12 and scorer.metrics["windows"] == 6
    assert all((s == 0).all() for s in fill_unscored(scores))  # nothing scored: 0
    partly = [np.array([2.0, np.nan]), np.array([np.nan, 6.0])]
    np.testing.assert_array_equal(np.concatenate(fill_unscored(partly)), [2, 4, 4, 6])  # the mean of the scored
    np.testing.assert_array_equal(np.concatenate(fill_unscored(partly, fill=-1)), [2, -1, -1, 6])


def test_noisy_oracle_stays_on_the_scale_and_drops_answers_at_its_rate():
    dataset = cartpole_dataset(n_episodes=4, horizon=25)
    labeler = OracleScoreLabeler(dataset.gt_reward_range, noise_std=3.0, unreadable_rate=0.3, seed=1)
    scores = np.concatenate(WindowScorer(labeler, GOAL, window_size=1).score(dataset))
    assert 0.15 < np.isnan(scores).mean() < 0.45
    assert np.nanmin(scores) >= 0 and np.nanmax(scores) <= 10
    with pytest.raises(ValueError, match="high > low"):
        OracleScoreLabeler((1.0, 1.0))


# ----------------------------------------------------------------------------------------- resume
def test_a_failed_run_resumes_without_asking_any_window_twice_and_ends_with_the_same_scores(tmp_path):
    dataset = cartpole_dataset(n_episodes=3, horizon=10)
    expected = WindowScorer(OracleScoreLabeler(dataset.gt_reward_range, noise_std=2.0), GOAL, window_size=3).score(dataset)

    store = LabelStore(tmp_path / "labels.sqlite")
    # Two windows a call; the fourth call fails.
    first = FakeScoreLabeler(OracleScoreLabeler(dataset.gt_reward_range, noise_std=2.0), batch_size=2,
                             errors=[None, None, None, ConnectionError("the VLM server went away")])
    with pytest.raises(ConnectionError):
        WindowScorer(first, GOAL, store, window_size=3, retry=RetryPolicy(max_retries=0)).score(dataset)
    store.close()
    assert len(first.answered) == 6  # three calls of two windows answered, then the server went away

    store = LabelStore(tmp_path / "labels.sqlite")
    second = FakeScoreLabeler(OracleScoreLabeler(dataset.gt_reward_range, noise_std=2.0))
    scorer = WindowScorer(second, GOAL, store, window_size=3)
    scores = scorer.score(dataset)
    windows = scorer.metrics["windows"]
    assert windows == 12 and scorer.metrics["cached"] == 6 and len(second.answered) == windows - 6
    assert not set(first.answered_windows()) & set(second.answered_windows())
    for got, want in zip(scores, expected):
        np.testing.assert_array_equal(got, want)


def test_a_labeler_failing_once_is_retried(tmp_path):
    dataset = cartpole_dataset(n_episodes=1, horizon=4)
    labeler = FakeScoreLabeler(OracleScoreLabeler(dataset.gt_reward_range), errors=[ConnectionError("the VLM server went away")])
    scorer = WindowScorer(labeler, GOAL, window_size=2, retry=RetryPolicy(backoff_s=0.0))
    assert not np.isnan(scorer.score(dataset)[0]).any()
    assert scorer.metrics["failed_calls"] == 1 and labeler.calls == 2


# One labelling run in a subprocess: the scripted labeler logs every window it answers and, on
# request, SIGKILLs its own process when asked its k-th batch. (Not a shared fake: what it answered
# must be in a file that outlives the SIGKILL.)
CHILD = r"""
import os, signal, sys
from vlm_reward_wrappers.label_store import LabelStore, frame_hash
from vlm_reward_wrappers.labelers import OracleScoreLabeler
from vlm_reward_wrappers.offline import OfflineDataset, WindowScorer, fill_unscored, mix_rewards

store_path, log_path, kill_on_call, out_id = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]


class DyingOracle(OracleScoreLabeler):
    batch_size = 2
    calls = 0

    def score(self, windows, goal):
        DyingOracle.calls += 1
        if DyingOracle.calls == kill_on_call:
            os.kill(os.getpid(), signal.SIGKILL)
        answers = super().score(windows, goal)
        with open(log_path, "a") as log:
            log.writelines(frame_hash(w.frames) + "\n" for w in windows)
        return answers


dataset = OfflineDataset.from_minari("cartpole/sparse-v0")
scorer = WindowScorer(DyingOracle(dataset.gt_reward_range, noise_std=1.0), GOAL, LabelStore(store_path), window_size=3)
rewards = mix_rewards(dataset, fill_unscored(scorer.score(dataset)), 0.1, add_dataset_reward=True)
dataset.to_minari(out_id, rewards)
"""


def _run_child(folder, minari_home, kill_on_call, out_id):
    """Label in a subprocess with the store and the log of answered windows in ``folder``."""
    folder.mkdir(exist_ok=True)
    script = folder / "child.py"
    script.write_text(f"GOAL = {GOAL!r}\n" + CHILD)
    env = {**os.environ, "PYTHONPATH": str(REPO), "MINARI_DATASETS_PATH": str(minari_home), "SDL_VIDEODRIVER": "dummy"}
    return subprocess.run(
        [sys.executable, str(script), str(folder / "labels.sqlite"), str(folder / "answered.log"), str(kill_on_call),
         out_id],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=120,
    )


def test_sigkill_mid_run_then_resume_sends_no_window_twice_and_writes_the_same_dataset(tmp_path, minari_home):
    dataset = cartpole_dataset(n_episodes=3, horizon=10)
    dataset.to_minari("cartpole/sparse-v0", [e.rewards for e in dataset.episodes])

    killed = _run_child(tmp_path / "run", minari_home, 3, "cartpole/killed-v0")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (minari_home / "cartpole" / "killed-v0").exists()
    first = (tmp_path / "run" / "answered.log").read_text().split()
    resumed = _run_child(tmp_path / "run", minari_home, 0, "cartpole/resumed-v0")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    second = (tmp_path / "run" / "answered.log").read_text().split()[len(first) :]
    reference = _run_child(tmp_path / "reference", minari_home, 0, "cartpole/reference-v0")
    assert reference.returncode == 0, reference.stderr[-2000:]

    assert len(first) == 4 and not set(first) & set(second)  # two batches of two answered before the kill
    assert len(first) + len(second) == 12  # 3 episodes x 4 windows, each asked once
    source, written, wanted = (minari.load_dataset(f"cartpole/{n}-v0") for n in ("sparse", "resumed", "reference"))
    assert_same_data_but_rewards(source, written)
    for got, want in zip(written.iterate_episodes(), wanted.iterate_episodes()):
        np.testing.assert_array_equal(got.rewards, want.rewards)


# ------------------------------------------------------------------------------------ preferences
def test_preference_route_relabels_and_ranks_transitions_by_the_true_reward(tmp_path):
    dataset = cartpole_dataset(n_episodes=4, horizon=50, frame_size=48)
    store = LabelStore(tmp_path / "labels.sqlite")
    relabeler = PreferenceRelabeler(OracleLabeler(), GOAL, store, n_queries=300, reward_image_size=48, ensemble_size=1,
                                    epochs=30, seed=0)
    rewards = relabeler.relabel(dataset)
    metrics = relabeler.metrics
    # Pairs of frames that look alike (a fallen pole) may repeat a query: it is answered from the store.
    assert metrics["queries_sent"] + metrics["queries_cached"] == metrics["queries_issued"] > 250
    assert metrics["label_accuracy"] == 1.0
    learned, gt = np.concatenate(rewards), dataset.gt_rewards
    i, j = np.random.default_rng(0).integers(len(gt), size=(2, 5000))
    differ = gt[i] != gt[j]
    ranking = np.mean((learned[i] > learned[j])[differ] == (gt[i] > gt[j])[differ])
    assert ranking > 0.7, ranking  # chance is 0.5

    out = dataset.to_minari("cartpole/preference-v0", mix_rewards(dataset, rewards, weight=2.0))
    np.testing.assert_allclose(np.concatenate([e.rewards for e in out.iterate_episodes()]), 2.0 * learned, rtol=1e-6)

    # Again with the same store: every answer is resumed from it, and nothing is asked.
    again = PreferenceRelabeler(OracleLabeler(), GOAL, store, n_queries=300, reward_image_size=48, ensemble_size=1, epochs=1)
    again.relabel(dataset)
    assert again.metrics["queries_sent"] == 0 and again.metrics["labels_resumed"] == metrics["queries_answered"]


def test_preference_route_with_no_usable_answer_says_so():
    dataset = cartpole_dataset(n_episodes=1, horizon=10)
    relabeler = PreferenceRelabeler(OracleLabeler(equal_threshold=10.0), GOAL, n_queries=5, reward_image_size=48)
    with pytest.raises(ValueError, match="no reward model can be trained"):
        relabeler.relabel(dataset)


# ---------------------------------------------------------------------------------------- sources
def test_flat_arrays_and_an_sb3_replay_buffer_become_episodes():
    from stable_baselines3.common.buffers import ReplayBuffer

    obs_space = gym.spaces.Box(0, 255, (3, 8, 8), np.uint8)  # SB3's channel-first images
    buffer = ReplayBuffer(24, obs_space, gym.spaces.Box(-1, 1, (1,)), n_envs=2)  # 12 steps per env
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)
    for t in range(15):  # wraps around: the oldest three steps are overwritten
        next_obs = rng.integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)
        done = np.array([t % 5 == 4, t == 11])
        buffer.add(obs, next_obs, rng.uniform(-1, 1, (2, 1)), np.full(2, float(t)), done,
                   [{"TimeLimit.truncated": bool(done[0])}, {}])
        obs = next_obs
    dataset = OfflineDataset.from_replay_buffer(buffer)
    lengths = [len(e) for e in dataset.episodes]
    assert lengths == [2, 5, 5, 9, 3] and dataset.total_steps == 24
    first = dataset.episodes[0]
    np.testing.assert_array_equal(first.rewards, [3.0, 4.0])  # steps 3 and 4 of env 0
    assert first.truncations[-1] and not first.terminations.any() and dataset.episodes[3].terminations[-1]
    np.testing.assert_array_equal(first.frames, np.moveaxis(first.observations, 1, -1))

    # Without stored next observations the oldest slot holds the newest next observation: it is left out.
    lean = ReplayBuffer(4, gym.spaces.Box(-9, 9, (1,)), gym.spaces.Discrete(3), optimize_memory_usage=True,
                        handle_timeout_termination=False)
    for t in range(6):
        lean.add(np.array([[t]]), np.array([[t + 1]]), np.array([[t % 3]]), np.array([1.0]), np.array([False]), [{}])
    frames = np.zeros((4, 1, 8, 8, 3), dtype=np.uint8)
    [episode] = OfflineDataset.from_replay_buffer(lean, frames=frames, next_frames=frames).episodes
    np.testing.assert_array_equal(episode.observations[:, 0], [3, 4, 5, 6])
    np.testing.assert_array_equal(episode.actions, [0, 1, 2])

    frames = rng.integers(0, 256, (7, 16, 16, 3), dtype=np.uint8)
    flat = OfflineDataset.from_arrays(
        np.arange(6)[:, None], np.arange(1, 7)[:, None], np.zeros((6, 1)), np.ones(6),
        [0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], frames[:-1], frames[1:],
    )
    assert [len(e) for e in flat.episodes] == [2, 4]
    np.testing.assert_array_equal(flat.episodes[1].observations[:, 0], [2, 3, 4, 5, 6])
    np.testing.assert_array_equal(flat.episodes[1].frames, frames[2:])
    flat.to_minari("arrays/flat-v0", [e.rewards for e in flat.episodes])
    back = OfflineDataset.from_minari("arrays/flat-v0")  # the frames travel in the infos
    np.testing.assert_array_equal(back.episodes[1].frames, frames[2:])


def test_a_dataset_without_frames_says_where_to_put_them():
    dataset = cartpole_dataset(n_episodes=1, horizon=3)
    for episode in dataset.episodes:
        episode.infos = {}
    dataset.to_minari("cartpole/noframes-v0", [e.rewards for e in dataset.episodes])
    with pytest.raises(ValueError, match="has no frames"):
        OfflineDataset.from_minari("cartpole/noframes-v0")


def test_minari_is_imported_only_when_used_and_its_absence_names_the_extra(monkeypatch):
    code = (
        "import sys, vlm_reward_wrappers, vlm_reward_wrappers.offline, vlm_reward_wrappers.cli\n"
        "loaded = [m for m in ('minari', 'd3rlpy', 'h5py') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "SDL_VIDEODRIVER": "dummy"})
    monkeypatch.setitem(sys.modules, "minari", None)
    with pytest.raises(ImportError, match=r"pip install 'vlm-reward-wrappers\[offline\]'"):
        OfflineDataset.from_minari("cartpole/sparse-v0")


# -------------------------------------------------------------------------------------------- CLI
def test_cli_label_writes_the_dataset_and_a_second_run_asks_nothing(capsys, tmp_path):
    dataset = cartpole_dataset(n_episodes=2, horizon=8)
    dataset.to_minari("cartpole/sparse-v0", [e.rewards for e in dataset.episodes])
    store = str(tmp_path / "labels.sqlite")
    common = ["label", "--dataset", "cartpole/sparse-v0", "--label-store", store, "--weight", "0.1", "--json"]
    main([*common, "--out", "cartpole/a-v0", "--add-dataset-reward", "--score-noise", "1"])
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    main([*common, "--out", "cartpole/b-v0", "--add-dataset-reward", "--score-noise", "1"])
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["windows"] == second["windows"] == second["cached"] == 4 and second["sent"] == 0
    assert first["vlm_reward_true_correlation"] > 0.5
    a, b = minari.load_dataset("cartpole/a-v0"), minari.load_dataset("cartpole/b-v0")
    for x, y in zip(a.iterate_episodes(), b.iterate_episodes()):
        np.testing.assert_array_equal(x.rewards, y.rewards)

    main([*common[:-1], "--out", "cartpole/p-v0", "--method", "preference", "--queries", "40", "--epochs", "2",
          "--reward-image-size", "48"])
    out = capsys.readouterr().out
    assert "preference rewards from the oracle labeler" in out and "label_accuracy" in out
    assert minari.load_dataset("cartpole/p-v0").total_steps == 16
    with pytest.raises(SystemExit, match="cannot score transitions"):
        main([*common, "--out", "cartpole/c-v0", "--labeler", "clip"])
