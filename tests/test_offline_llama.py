"""Offline labelling with the tiny random GGUF VLM, through llama-cpp-python's real request path."""

import json

import numpy as np
import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("minari")

import minari  # noqa: E402

from conftest import GOAL  # noqa: E402
from offline_data import assert_same_data_but_rewards, cartpole_dataset, minari_home  # noqa: E402,F401  (autouse)
from tiny_models import write_tiny_vlm  # noqa: E402
from vlm_reward_wrappers.cli import main  # noqa: E402
from vlm_reward_wrappers.labelers import ChatScoreLabeler, LlamaCppBackend  # noqa: E402
from vlm_reward_wrappers.labelers.prompts import describe_actions  # noqa: E402
from vlm_reward_wrappers.label_store import LabelStore, frame_hash, window_hash  # noqa: E402
from vlm_reward_wrappers.offline import (  # noqa: E402
    OfflineDataset,
    WindowScorer,
    fill_unscored,
    mix_rewards,
)

# One thread each: the test machines have 2 cores, shared (shared/notes/local-vlm.md).
FAST = dict(n_ctx=2048, n_threads=1, n_threads_batch=1)


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    return write_tiny_vlm(tmp_path_factory.mktemp("tiny-vlm"))


def test_the_tiny_vlm_labels_a_dataset_end_to_end(tiny_vlm, tmp_path):
    recorded = cartpole_dataset(n_episodes=2, horizon=5)
    recorded.to_minari("cartpole/sparse-v0", [e.rewards for e in recorded.episodes])
    dataset = OfflineDataset.from_minari("cartpole/sparse-v0")
    store = LabelStore(tmp_path / "labels.sqlite")
    labeler = ChatScoreLabeler(LlamaCppBackend(*tiny_vlm, **FAST), max_analysis_tokens=24)
    scorer = WindowScorer(labeler, GOAL, store, window_size=3)
    try:
        scores = scorer.score(dataset)
    finally:
        labeler.close()
    metrics = scorer.metrics
    assert metrics["windows"] == metrics["sent"] == 4 and metrics["failed_calls"] == 0
    # The random model writes gibberish: every score is unreadable, counted, and filled with the fallback.
    assert metrics["unscored"] == metrics["transitions"] == 10 and all(np.isnan(s).all() for s in scores)
    out = dataset.to_minari("cartpole/tiny-vlm-v0", mix_rewards(dataset, fill_unscored(scores), 0.5, True))
    assert_same_data_but_rewards(minari.load_dataset("cartpole/sparse-v0"), out)
    for written, source in zip(out.iterate_episodes(), dataset.episodes):
        np.testing.assert_array_equal(written.rewards, source.rewards)  # sparse + 0.5 x 0
    window = dataset.episodes[0].window(0, 3)
    key = window_hash([frame_hash(f) for f in window.frames], describe_actions(window.actions))
    record = store.lookup_scores(key, GOAL, labeler.labeler_id, labeler.prompt_version)
    assert record is not None and "[answer] " in record.raw and len(record.frame_hashes) == 4
    assert record.actions.startswith("Action 1: [") and np.isnan(record.scores).all()


def test_cli_label_with_the_tiny_vlm(tiny_vlm, tmp_path, capsys):
    recorded = cartpole_dataset(n_episodes=1, horizon=4)
    recorded.to_minari("cartpole/sparse-v0", [e.rewards for e in recorded.episodes])
    model, projector = map(str, tiny_vlm)
    main(["label", "--dataset", "cartpole/sparse-v0", "--out", "cartpole/vlm-v0", "--labeler", "llama",
          "--model-path", model, "--mmproj-path", projector, "--vlm-threads", "1", "--n-ctx", "2048",
          "--single-stage", "--window", "2", "--label-store", str(tmp_path / "labels.sqlite"), "--json"])
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["windows"] == figures["sent"] == 2 and figures["unscored"] == 4
    assert minari.load_dataset("cartpole/vlm-v0").total_steps == 4
