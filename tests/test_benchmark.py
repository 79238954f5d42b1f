"""benchmarks/harness.py and its entry point benchmarks/run.py, on a tiny task."""

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from vlm_reward_wrappers.config import make_config

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
_spec = importlib.util.spec_from_file_location("bench_run", SCRIPT)
run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run)
harness = run.harness


@pytest.fixture
def tiny_task(monkeypatch):
    learner = dict(seed_steps=100, query_every=100, pairs_per_query=10, feedback_budget=30, epochs_per_update=2)
    monkeypatch.setitem(harness.TASKS, "tiny", harness.TaskConfig(
        "vlmrw/CartPoleAngle-v0", "PPO", steps={"smoke": 256}, learner={"smoke": learner},
        eval_every={"smoke": 128}, eval_episodes=1, algo_kwargs=dict(n_steps=128, batch_size=64, n_epochs=1),
    ))
    return "tiny"


def test_benchmark_writes_table_curves_and_normalised_scores(tiny_task, tmp_path):
    results = harness.run_benchmark("smoke", [tiny_task], ["true", "mistake-0.3"], [0], tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["source"] for r in lines] == ["true", "mistake-0.3"] == [r["source"] for r in results]
    truth, noisy = results
    assert truth["final_norm"] == pytest.approx(1.0) and truth["queries"] == 0
    assert noisy["queries"] == 20 and 0.4 < noisy["label_accuracy"] < 0.95  # batches at steps 100 and 200
    assert -1.0 <= noisy["gt_correlation"] <= 1.0 and "gt_correlation" not in truth
    assert [step for step, _ in noisy["curve"]] == [0, 128, 256]
    table = (tmp_path / "results.md").read_text()
    assert "| tiny | mistake-0.3 | PPO | 0 | 256 |" in table and "Machine:" in table
    assert (tmp_path / "tiny.png").stat().st_size > 1000


def test_benchmark_refuses_sources_without_a_labeler(tiny_task, tmp_path):
    with pytest.raises(ValueError, match="--labeler llama"):
        harness.run_benchmark("smoke", [tiny_task], ["vlm"], [0], tmp_path)


def test_missing_matplotlib_names_the_extra_before_the_runs(tiny_task, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    monkeypatch.setattr(harness, "run_one", lambda *args: pytest.fail("ran without a way to plot"))
    with pytest.raises(ImportError, match=r"pip install 'vlm-reward-wrappers\[plot\]'"):
        harness.run_benchmark("smoke", [tiny_task], ["true"], [0], tmp_path)


def test_report_without_matplotlib_keeps_the_tables(tiny_task, tmp_path, monkeypatch):
    result = {"task": tiny_task, "source": "true", "algo": "PPO", "seed": 0, "steps": 256, "final": -5.0,
              "curve": [[0, -50.0], [256, -5.0]], "queries": 0, "label_accuracy": None, "wall_s": 1.0,
              "env_steps_per_s": 256.0}
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"vlm-reward-wrappers\[plot\]"):
        harness.write_report([result], {tiny_task: -50.0}, tmp_path, "test machine")
    assert (tmp_path / "summary.json").is_file() and "| tiny | true | PPO |" in (tmp_path / "results.md").read_text()


def test_run_writes_under_the_benchmarks_folder_by_default_and_prints_the_table(tiny_task, tmp_path, capsys):
    assert run.default_out("smoke") == SCRIPT.parent / "results" / "smoke"
    run.main(["--tasks", tiny_task, "--sources", "true", "--out", str(tmp_path)])
    assert "| tiny | true | PPO | 0 | 256 |" in capsys.readouterr().out
    assert (tmp_path / "results.md").is_file()


def test_run_is_a_script_that_works_from_any_folder(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--size" in out.stdout and "--labeler" in out.stdout and "benchmarks/results/<size>" in out.stdout


def test_the_package_needs_no_plotting_library():
    script = "import sys, vlm_reward_wrappers, vlm_reward_wrappers.cli; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_the_grid_resumes_skips_finished_runs_and_summarises_over_seeds(tiny_task, tmp_path, monkeypatch):
    def fake_run(task, source, seed, size, labeler=None, config=None):
        final = {"true": -10.0, "oracle": -20.0 - seed}[source]
        return {"task": task, "env_id": "x", "source": source, "algo": "PPO", "seed": seed, "size": size,
                "steps": 256, "metric": "return", "curve": [[0, -50.0], [96, -50.0], [192, final - 10], [256, final]],
                "final": final,
                "auc": final, "wall_s": 10.0 + seed, "env_steps_per_s": 1.0, "queries": 30 if source != "true" else 0,
                "labels_used": 0, "label_accuracy": None}

    monkeypatch.setattr(harness, "random_score", lambda *args: -50.0)
    monkeypatch.setattr(harness, "run_one", fake_run)
    harness.run_benchmark("smoke", [tiny_task], ["true", "oracle"], [0, 1], tmp_path)
    first = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(first) == 4
    # A second sitting adds a seed: only its two runs are run; the file keeps every earlier line.
    ran = []
    monkeypatch.setattr(harness, "run_one", lambda *args, **kwargs: ran.append(args[:3]) or fake_run(*args, **kwargs))
    harness.run_benchmark("smoke", [tiny_task], ["true", "oracle"], [0, 1, 2], tmp_path)
    assert ran == [(tiny_task, "true", 2), (tiny_task, "oracle", 2)]
    assert (tmp_path / "results.jsonl").read_text().splitlines()[:4] == first
    summary = {s["source"]: s for s in json.loads((tmp_path / "summary.json").read_text())}
    oracle = summary["oracle"]
    # normalised: (final - random) / (true - random) = (30 - seed) / 40 for seeds 0, 1, 2
    assert oracle["n_seeds"] == 3 and oracle["median_normalized"] == pytest.approx(29 / 40)
    assert oracle["iqr_normalized"] == pytest.approx(1 / 40) and oracle["median_queries"] == 30
    assert oracle["median_wall_s"] == 11.0 and summary["true"]["median_normalized"] == 1.0
    # late, the mean of the last 3 evaluations: (2 final - 60) / 3, so (50 - 2 seed) / 70 normalised
    assert oracle["median_late_normalized"] == pytest.approx(48 / 70)
    assert f"| {tiny_task} | PPO | oracle | 3 | 0.72 | 0.03 | 0.69 | -21.00 | 30 | 11 |" in (tmp_path / "summary.md").read_text()
    # A sitting of another task reports both; the floor kept from the first sitting is not computed again.
    monkeypatch.setitem(harness.TASKS, "other", dataclasses.replace(harness.TASKS[tiny_task], env_id="Pendulum-v1"))
    floors = []
    monkeypatch.setattr(harness, "random_score", lambda *args: floors.append(args[0]) or -100.0)

    def run_beside_another_grid(task, source, seed, size, labeler=None, config=None):
        with open(tmp_path / "results.jsonl", "a") as f:  # a grid in another process finishes a run meanwhile
            f.write(json.dumps({**fake_run(tiny_task, "oracle", 3, size), "final": -40.0}) + "\n")
        return fake_run(task, source, seed, size)

    monkeypatch.setattr(harness, "run_one", run_beside_another_grid)
    harness.run_benchmark("smoke", ["other"], ["true"], [0], tmp_path)
    assert floors == ["Pendulum-v1"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {(s["task"], s["source"]) for s in summary} == {(tiny_task, "true"), (tiny_task, "oracle"), ("other", "true")}
    assert next(s for s in summary if s["source"] == "oracle")["n_seeds"] == 4


def test_realistic_teacher_is_a_simulated_source():
    assert harness.is_simulated("realistic-0.75") and not harness.is_simulated("vlm")
    teacher = harness.simulated_labeler("realistic-0.75", seed=0)
    assert teacher.target_accuracy == 0.75


class _ReachZero(gym.Env):
    """Steps a counter down from 3 by the action's sign; success (MetaWorld's key) at 0, reward -|counter|."""

    observation_space = gym.spaces.Box(-10, 10, (1,))
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.counter, self.t = 3, 0
        return np.array([self.counter], np.float32), {}

    def step(self, action):
        self.counter += 1 if action else -1
        self.t += 1
        info = {"success": self.counter == 0}
        return np.array([self.counter], np.float32), -abs(self.counter), False, self.t >= 5, info


def test_scores_record_success_where_the_env_reports_it():
    from vlm_reward_wrappers.evaluation import policy_score, policy_scores

    env = _ReachZero()
    down = policy_scores(lambda obs: 0, env, episodes=2, seed=0)
    # counters 2, 1, 0, -1, -2: success at step 3, and a return that keeps counting after it.
    assert down == {"return": -6.0, "success": 1.0}
    assert policy_scores(lambda obs: 1, env, episodes=2, seed=0) == {"return": -30.0, "success": 0.0}
    assert policy_score(lambda obs: 0, env, 2, "success", seed=0) == 1.0
    assert "success" not in policy_scores(lambda obs: np.zeros(1), gym.make("Pendulum-v1"), episodes=1, seed=0)


def test_metaworld_tasks_record_success_beside_their_return(monkeypatch):
    callback = harness.TrueScoreCallback(_ReachZero(), eval_every=1, episodes=1, metric="return")
    monkeypatch.setattr(callback, "model", type("Down", (), {"predict": lambda self, obs, deterministic: (0, None)})(),
                        raising=False)
    callback.evaluate()
    assert callback.curve == [[0, -6.0]] and callback.curves["success"] == [[0, 1.0]]
    assert all(harness.TASKS[t].metric == "return" for t in ("drawer-open", "sweep-into"))


def test_an_ablation_runs_its_task_with_one_change_and_is_judged_against_the_tasks_truth(tiny_task, tmp_path,
                                                                                          monkeypatch):
    assert harness.task_config("drawer-open+no-exploration").learner["full"]["exploration_steps"] == 0
    # Without exploration the first query stays where it was: after RL-VLM-F's 1,000 + 9,000 steps.
    assert harness.task_config("drawer-open+no-exploration").learner["full"]["seed_steps"] == 10_000
    assert harness.task_config("pendulum+shift4").learner["full"]["augment_shift"] == 4
    assert harness.task_config("cloth-fold+double-queries").learner["full"]["query_every"] == 250
    assert harness.task_config("drawer-open+robot-shown").env_kwargs == {"hide_robot": False}
    both = harness.task_config("drawer-open+robot-shown+dense-queries")  # changes chain, left to right
    assert both.env_kwargs == {"hide_robot": False} and both.learner["full"]["query_every"] == 1000
    assert harness.task_config("drawer-open+robot-shown+topview").env_kwargs == {"hide_robot": False, "camera": "topview"}
    assert make_config(**harness.task_config("cloth-fold+resnet18").learner["full"]).reward_net == "resnet18"
    assert make_config(**harness.task_config("cloth-fold+disagreement").learner["full"]).sampler == "disagreement"
    # Cloth-fold's true-reward agents start the entropy coefficient at 0.01, its learned-reward agents at SB3's 1.
    assert harness.algo_settings(harness.task_config("cloth-fold"), learned=False)["ent_coef"] == "auto_0.01"
    assert harness.algo_settings(harness.task_config("cloth-fold"), learned=True)["ent_coef"] == "auto"
    assert harness.algo_settings(harness.task_config("cloth-fold+alpha-0.01"), learned=True)["ent_coef"] == "auto_0.01"
    assert harness.algo_settings(harness.task_config("cloth-fold+alpha-0.1"), learned=True)["ent_coef"] == "auto_0.1"
    assert harness.task_config("cloth-fold+truncated").env_kwargs == {"terminal": False}
    assert make_config(**harness.task_config("cartpole-angle").learner["full"]).normalize_on == "buffer"
    assert make_config(**harness.task_config("cartpole-angle+normalize-recent").learner["full"]).normalize_on == "recent"
    assert make_config(**harness.task_config("cloth-fold+normalize-buffer").learner["full"]).normalize_on == "buffer"
    with pytest.raises(ValueError, match="unknown task 'pendulum\\+nope'"):
        harness.task_config("pendulum+nope")
    with pytest.raises(SystemExit):
        run.build_parser().parse_args(["--tasks", "pendulum+nope"])

    calls = []

    def fake_run(task, source, seed, size, labeler=None, config=None):
        calls.append((task, source))
        final = {"true": -10.0, "oracle": -30.0}[source] if "+" not in task else -20.0
        return {"task": task, "source": source, "seed": seed, "size": size, "algo": "PPO", "steps": 256,
                "metric": "return", "curve": [[0, -50.0], [256, final]], "final": final, "auc": final,
                "queries": 0, "label_accuracy": None, "wall_s": 1.0, "env_steps_per_s": 256.0}

    monkeypatch.setattr(harness, "run_one", fake_run)
    monkeypatch.setattr(harness, "random_score", lambda *args: -50.0)
    monkeypatch.setitem(harness.ABLATIONS, "bigger", harness._learner_change(lambda s: {**s, "pairs_per_query": 20}))
    results = harness.run_benchmark("smoke", [tiny_task, f"{tiny_task}+bigger"], ["true", "oracle"], [0], tmp_path)
    assert ("tiny+bigger", "true") not in calls and len(calls) == 3  # the task's truth is not run twice
    changed = next(r for r in results if r["task"] == "tiny+bigger")
    assert changed["final_norm"] == pytest.approx(0.75)  # (-20 - -50) / (-10 - -50)
    # Seed 1 ran only as is: the comparison keeps to seed 0, which both sides have.
    harness.run_benchmark("smoke", [tiny_task], ["true", "oracle"], [1], tmp_path)
    table = (tmp_path / "ablation.md").read_text()
    assert "| tiny | bigger | oracle | 0 | 0.50 | 0.75 | +0.25 |" in table
    # A chained ablation is set beside the task without its last change.
    runs = [{"task": t, "source": "oracle", "seed": 0, "final_norm": n} for t, n in
            [("a", 0.1), ("a+b", 0.4), ("a+b+c", 0.9)]]
    assert [(r["task"], r["change"], r["difference"]) for r in harness.ablation_rows(runs)] == [
        ("a", "b", pytest.approx(0.3)), ("a+b", "c", pytest.approx(0.5))]


def test_a_tasks_env_arguments_reach_the_training_and_evaluation_envs(tiny_task, monkeypatch):
    made = []
    real_make = harness.gym.make

    def make(env_id, **kwargs):
        made.append(kwargs)
        return real_make(env_id, **kwargs)

    monkeypatch.setattr(harness.gym, "make", make)
    monkeypatch.setitem(harness.TASKS, "short", dataclasses.replace(harness.TASKS[tiny_task],
                                                                    env_kwargs={"max_episode_steps": 20}))
    harness.run_one("short", "true", 0, "smoke")
    assert made == [{"render_mode": None, "max_episode_steps": 20}, {"max_episode_steps": 20}]


@pytest.fixture
def probe():
    spec = importlib.util.spec_from_file_location("reward_image_size", SCRIPT.parent / "reward_image_size.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_reward_image_size_probe_scores_a_visible_reward_as_learnable(probe):
    # The true reward is how bright the frame is: the CNN can see all of it, so held-out pairs rank right.
    rewards = np.random.default_rng(0).uniform(0, 1, 160)
    frames = np.broadcast_to((rewards * 255).astype(np.uint8)[:, None, None, None], (160, 96, 96, 3))
    row = probe.rank_quality(frames, rewards, np.arange(160) // 10, size=64, pairs=200, epochs=5, updates=2)
    assert row["pair_accuracy"] > 0.9 and row["correlation"] > 0.9 and 190 <= row["pairs"] <= 200
    assert row["best_quarter_accuracy"] > 0.8  # the brightest quarter, told apart among themselves
    # Frames of noise that says nothing of the reward: held-out pairs rank at chance, whatever training fits.
    noise = np.random.default_rng(1).integers(0, 256, (160, 96, 96, 3), dtype=np.uint8)
    blind = probe.rank_quality(noise, rewards, np.arange(160) // 10, size=64, pairs=200, epochs=5, updates=2)
    assert 0.35 < blind["pair_accuracy"] < 0.65 and abs(blind["correlation"]) < 0.4
    assert 0.3 < blind["best_quarter_accuracy"] < 0.7


def test_the_reward_image_size_probe_films_the_same_frames_on_every_run(probe):
    # Rope's script ends after 2 of 5 steps; the random actions after it are seeded too.
    first, second = probe.scripted_frames("rope", 2), probe.scripted_frames("rope", 2)
    assert len(first[0]) == 10
    np.testing.assert_array_equal(first[0], second[0])


def test_the_reward_image_size_probe_films_metaworld_through_the_camera_asked_for(probe, monkeypatch):
    made = []

    def make(env_id, **kwargs):
        made.append((env_id, kwargs))
        raise RuntimeError("made")

    monkeypatch.setattr(probe.gym, "make", make)
    with pytest.raises(RuntimeError, match="made"):
        probe.scripted_frames("drawer-open", 1, camera="topview")
    assert made == [("vlmrw/MetaWorld-drawer-open-v0", {"render_mode": "rgb_array", "hide_robot": False, "camera": "topview"})]


def test_each_run_records_its_commit_and_cost_and_the_summary_its_wall_time_over_the_rendered_truth(
        tiny_task, tmp_path):
    results = harness.run_benchmark("smoke", [tiny_task], ["true", "true-rendered", "oracle"], [0], tmp_path)
    truth, rendered, oracle = results
    commit = results[0]["commit"].removesuffix("+changes")
    assert {r["commit"] for r in results} == {harness.STARTED_ON_COMMIT} and len(commit) == 10
    assert subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=SCRIPT.parent).returncode == 0
    assert rendered["queries"] == 0 and "cost" not in rendered and rendered["final_norm"] is not None
    assert {"render", "frame_prep", "scoring", "learner", "waiting", "training"} <= set(oracle["cost"])
    assert oracle["cost"]["render"] > 0 and oracle["cost"]["training"] > 0
    row = {s["source"]: s for s in json.loads((tmp_path / "summary.json").read_text())}
    assert row["oracle"]["wall_over_true_rendered"] == pytest.approx(oracle["wall_s"] / rendered["wall_s"])
    assert row["true-rendered"]["wall_over_true_rendered"] == pytest.approx(1.0)
    assert "wall / true reward rendered" in (tmp_path / "summary.md").read_text()


def _server_down():
    raise ConnectionError("the VLM server at http://127.0.0.1:9 is down")


def test_a_failed_cell_is_reported_and_the_others_go_on(tiny_task, tmp_path):
    with pytest.raises(harness.CellsFailed, match=r"1 cell\(s\) failed: \('tiny', 'vlm', 0\).*run the same command"):
        harness.run_benchmark("smoke", [tiny_task], ["vlm", "true"], [0], tmp_path, labelers={"vlm": _server_down})
    assert [json.loads(line)["source"] for line in (tmp_path / "results.jsonl").read_text().splitlines()] == ["true"]
    (failure,) = [json.loads(line) for line in (tmp_path / "failures.jsonl").read_text().splitlines()]
    assert failure["source"] == "vlm" and "the VLM server at http://127.0.0.1:9 is down" in failure["error"]
    assert "| tiny | true | PPO | 0 |" in (tmp_path / "results.md").read_text()  # the report covers the rest
    # The same command again runs only the cell that failed.
    with pytest.raises(harness.CellsFailed):
        harness.run_benchmark("smoke", [tiny_task], ["vlm", "true"], [0], tmp_path, labelers={"vlm": _server_down})
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 1
    assert len((tmp_path / "failures.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow
def test_grid_runs_its_cells_as_ray_tasks(tiny_task, tmp_path):
    pytest.importorskip("ray", reason="needs Ray: pip install -e '.[ray]'")

    def server_down():  # defined here, so Ray ships it by value (workers cannot import this test module)
        raise ConnectionError("the VLM server at http://127.0.0.1:9 is down")

    labelers = {"vlm": server_down}
    with pytest.raises(harness.CellsFailed, match=r"\('tiny', 'vlm', 0\)"):
        harness.run_benchmark("smoke", [tiny_task], ["true", "mistake-0.3", "vlm"], [0], tmp_path, labelers,
                              ray_address="local")
    results = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert sorted(r["source"] for r in results) == ["mistake-0.3", "true"]  # each finished cell written once
    noisy = next(r for r in results if r["source"] == "mistake-0.3")
    assert noisy["queries"] == 20 and [step for step, _ in noisy["curve"]] == [0, 128, 256]  # the driver's tiny task
    assert "the VLM server at http://127.0.0.1:9 is down" in (tmp_path / "failures.jsonl").read_text()


def test_grid_on_ray_without_ray_names_the_extra(tiny_task, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install 'vlm-reward-wrappers\[ray\]'"):
        harness.run_benchmark("smoke", [tiny_task], ["true"], [0], tmp_path, ray_address="local")


def test_a_swap_teacher_asks_each_pair_both_ways_and_both_asks_count_against_the_budget(tiny_task, tmp_path):
    labeler = harness.simulated_labeler("swap-realistic-0.75", 0)
    assert type(labeler).__name__ == "SwapConsistentLabeler" and harness.is_simulated("swap-oracle")
    (plain, swap) = harness.run_benchmark("smoke", [tiny_task], ["oracle", "swap-oracle"], [0], tmp_path)[-2:]
    # Batches at steps 100 and 200: 10 pairs each, or 5 pairs asked twice.
    assert plain["queries"] == 20 and swap["queries"] == 20 and swap["labels_used"] == 10
