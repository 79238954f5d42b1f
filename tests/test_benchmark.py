import json

import pytest

from vlm_reward_wrappers import benchmark
from vlm_reward_wrappers.benchmark import TaskConfig, run_benchmark


@pytest.fixture
def tiny_task(monkeypatch):
    learner = dict(seed_steps=100, query_every=100, pairs_per_query=10, feedback_budget=30, epochs_per_update=2)
    monkeypatch.setitem(benchmark.TASKS, "tiny", TaskConfig(
        "vlmrw/CartPoleAngle-v0", "PPO", steps={"smoke": 256}, learner={"smoke": learner},
        eval_every={"smoke": 128}, eval_episodes=1, algo_kwargs=dict(n_steps=128, batch_size=64, n_epochs=1),
    ))
    return "tiny"


def test_benchmark_writes_table_curves_and_normalised_scores(tiny_task, tmp_path):
    results = run_benchmark("smoke", [tiny_task], ["true", "mistake-0.3"], [0], tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["source"] for r in lines] == ["true", "mistake-0.3"] == [r["source"] for r in results]
    truth, noisy = lines
    assert truth["final_norm"] == pytest.approx(1.0) and truth["queries"] == 0
    assert noisy["queries"] == 20 and 0.4 < noisy["label_accuracy"] < 0.95  # batches at steps 100 and 200
    assert [step for step, _ in noisy["curve"]] == [0, 128, 256]
    table = (tmp_path / "results.md").read_text()
    assert "| tiny | mistake-0.3 | PPO | 0 | 256 |" in table and "Machine:" in table
    assert (tmp_path / "tiny.png").stat().st_size > 1000


def test_benchmark_refuses_sources_without_a_labeler(tiny_task, tmp_path):
    with pytest.raises(ValueError, match="--labeler llama"):
        run_benchmark("smoke", [tiny_task], ["vlm"], [0], tmp_path)
