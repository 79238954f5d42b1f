"""benchmarks/imitation_compare.py: its pure parts always; a tiny end-to-end run only where
.venv-imitation exists (imitation needs its own venv, so CI skips it)."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "imitation_compare.py"
_spec = importlib.util.spec_from_file_location("imitation_compare", SCRIPT)
compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare)


def _run(side, final, wall_s, checkpoints, **extra):
    return {"task": "t", "seed": 0, "side": side, "reward_input": "frame", "fragment_length": 1, "status": "ok",
            "queries": 10, "env_steps": 200, "wall_s": wall_s, "final": final, "reward_accuracy": None,
            "checkpoints": checkpoints, **extra}


def test_schedules_give_both_sides_the_same_steps_and_queries():
    for task in compare.TASKS:
        for size in ("smoke", "full"):
            plan = compare.schedule(task, size)
            config = compare.imitation_config(task, size, seed=0, fragment_length=1, beta=None)
            assert plan["batches"] * plan["every"] == plan["steps"]
            assert config["batches"] * config["steps_per_batch"] == plan["steps"]
            assert config["batches"] * config["pairs_per_batch"] == compare.TASKS[task].learner[size]["feedback_budget"]
            assert 0 < config["pool"] < config["steps_per_batch"]


def test_return_at_equal_wall_time_takes_the_last_policy_saved_in_time():
    fast = _run("ours", -1.0, 10.0, [{"wall_s": 0.0, "return": -9.0}, {"wall_s": 10.0, "return": -1.0}])
    slow = _run("imitation", -2.0, 30.0, [{"wall_s": 0.0, "return": -9.0}, {"wall_s": 8.0, "return": -5.0},
                                          {"wall_s": 30.0, "return": -2.0}])
    truth = _run("true reward", -0.5, 2.0, [{"wall_s": 0.0, "return": -9.0}, {"wall_s": 2.0, "return": -0.5}])
    failed = _run("imitation", None, None, [], status="failed: boom")
    compare.add_equal_wall_time([fast, slow, truth, failed])
    assert fast["equal_wall_s"] == slow["equal_wall_s"] == 10.0  # the true-reward run does not set it
    assert (fast["at_equal_wall"], slow["at_equal_wall"], truth["at_equal_wall"]) == (-1.0, -5.0, -0.5)
    assert failed["at_equal_wall"] is None
    table = compare.format_table([fast, failed], {"t": -50.0})
    assert "| t | ours, frames | 0 | 10 | 200 | 10 | -1.00 | n/a | -1.00 | 10 | n/a | ok |" in table
    assert "| imitation, 1-step fragments |" in table and "failed: boom" in table
    assert table.endswith("Random actions: t -50.00")


def test_a_missing_venv_is_explained(monkeypatch, tmp_path):
    monkeypatch.setattr(compare, "IMITATION_VENV", tmp_path / ".venv-imitation")
    with pytest.raises(SystemExit, match="pip install torch==2.13.0"):
        compare.compare("smoke", ["cartpole-angle"], [0], ["frame"], [1], None, tmp_path)


@pytest.mark.skipif(not compare.imitation_python().exists(), reason="needs .venv-imitation (see benchmarks/imitation_compare.py)")
def test_tiny_comparison_end_to_end(monkeypatch, tmp_path):
    tiny = compare.TaskConfig(
        "vlmrw/CartPoleAngle-v0", "PPO", steps={"smoke": 512}, eval_every={"smoke": 256}, eval_episodes=1,
        learner={"smoke": dict(query_every=256, pairs_per_query=5, feedback_budget=10, epochs_per_update=1)},
        algo_kwargs=dict(n_steps=128, batch_size=64, n_epochs=1),
    )
    monkeypatch.setitem(compare.TASKS, "tiny", tiny)
    runs = compare.compare("smoke", ["tiny"], [0], ["observation"], [1], None, tmp_path)
    assert [compare.run_label(r) for r in runs] == ["true reward", "ours, observations", "imitation, 1-step fragments"]
    for run in runs:
        assert run["status"] == "ok", run["status"]
        assert [c["steps"] for c in run["checkpoints"]] == [0, 256, 512]
    assert [c["queries"] for c in runs[1]["checkpoints"]] == [c["queries"] for c in runs[2]["checkpoints"]] == [0, 5, 10]
    assert runs[2]["env_steps"] > 512  # imitation's first batch comes from extra rollouts
    saved = json.loads((tmp_path / "imitation_compare.json").read_text())
    assert len(saved["runs"]) == 3 and "| tiny | imitation, 1-step fragments |" in (tmp_path / "imitation_compare.md").read_text()
    assert (tmp_path / "imitation_compare_tiny.png").stat().st_size > 1000
