"""benchmarks/offline_iql.py runs at its tiny size and reports its table."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("minari")
pytest.importorskip("d3rlpy")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "offline_iql.py"


@pytest.mark.slow
def test_the_offline_iql_benchmark_runs_and_writes_its_table(tmp_path):
    sources = ["sparse", "score-noisy+sparse", "preference-oracle"]
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "MINARI_DATASETS_PATH": str(tmp_path / "untouched")}
    subprocess.run(
        [sys.executable, str(SCRIPT), "--size", "tiny", "--out", str(tmp_path), "--sources", *sources],
        check=True, env=env, cwd=SCRIPT.parents[1], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300,
    )
    results = json.loads((tmp_path / "offline_iql.json").read_text())
    assert [row["source"] for row in results["rows"]] == sources
    for row in results["rows"]:
        assert -100 * 3.15 <= row["true_return"] <= 0 and 0 <= row["success"] <= 1
    scored = results["rows"][1]
    assert scored["label_figures"]["windows"] == 100 and scored["reward_true_correlation"] > 0.3
    table = (tmp_path / "offline_iql.md").read_text()
    assert table.count("\n| ") == 1 + len(sources) and "RG-VLM scores, noisy teacher" in table  # header + rows
    assert not (tmp_path / "untouched").exists()  # the benchmark keeps its datasets in a temporary folder
