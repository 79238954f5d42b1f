"""The label store keeps every committed answer through a SIGKILL, and a restarted run asks nothing twice."""

import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

from conftest import GOAL
from vlm_reward_wrappers import LabelStore, OracleLabeler, VLMRewardWrapper
from vlm_reward_wrappers.label_store import frame_hash

REPO = Path(__file__).resolve().parents[1]

# One training run in a subprocess: random actions (seeded, so both runs see the same frames), the
# simulated teacher logging every query it is asked, a store reporting every commit on stdout. (The
# teacher is not a shared fake: what it was asked must be in a file that outlives the SIGKILL.)
CHILD = r"""
import json, os, sys
import torch
torch.set_num_threads(1)
import gymnasium as gym
from vlm_reward_wrappers import LabelStore, OracleLabeler, VLMRewardWrapper
from vlm_reward_wrappers.label_store import frame_hash

db, log_path, steps, asynchronous = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "async"


class LoggingOracle(OracleLabeler):
    def label(self, queries, goal):
        with open(log_path, "a") as log:
            log.writelines(f"{frame_hash(q.frame_a)} {frame_hash(q.frame_b)}\n" for q in queries)
        return super().label(queries, goal)


class ReportingStore(LabelStore):
    def add(self, record, *args, **kwargs):
        super().add(record, *args, **kwargs)
        print("committed", record.hash_a, record.hash_b, flush=True)


env = VLMRewardWrapper(
    gym.make("vlmrw/CartPoleAngle-v0", render_mode="rgb_array"), goal=GOAL, labeler=LoggingOracle(delay_s=0.01),
    label_store=ReportingStore(db), seed=0, seed_steps=20, query_every=20, pairs_per_query=8, epochs_per_update=1,
    asynchronous=asynchronous,
)
print("resumed", json.dumps(env.learner.metrics), flush=True)
env.action_space.seed(0)
env.reset(seed=0)
for _ in range(steps):
    _, _, terminated, truncated, _ = env.step(env.action_space.sample())
    if terminated or truncated:
        env.reset()
env.learner.flush(timeout=60)
print("finished", json.dumps(env.learner.metrics), flush=True)
env.close()
"""


def _start(tmp_path, db, log, steps, mode):
    script = tmp_path / "child.py"
    script.write_text(f"GOAL = {GOAL!r}\n" + CHILD)
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, str(script), str(db), str(log), str(steps), mode],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=REPO,
    )
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    return process, lines


def _pairs(lines):
    return {tuple(line.split()[-2:]) for line in lines}


def _unordered(pairs):
    return {frozenset(pair) for pair in pairs}


def test_sigkill_loses_no_committed_label_and_the_next_run_repeats_no_query(tmp_path):
    db, first_log, second_log = tmp_path / "labels.sqlite", tmp_path / "first.log", tmp_path / "second.log"

    # Run 1 trains until at least 16 labels are committed, then is killed without warning.
    process, lines = _start(tmp_path, db, first_log, 10**9, "async")
    committed, deadline = [], time.monotonic() + 120
    try:
        while len(committed) < 16:
            assert process.poll() is None and time.monotonic() < deadline, "run 1 ended or stalled"
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            if line.startswith("committed"):
                committed.append(line)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    while not lines.empty():  # commits reported between the last read and the kill
        line = lines.get()
        committed += [line] if line.startswith("committed") else []

    # Every label reported committed is in the store, with both its frames, and the file is sound.
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store = LabelStore(db)
    records = store.records()
    stored = {(r.hash_a, r.hash_b) for r in records}
    assert _pairs(committed) <= stored
    for record in records:
        assert frame_hash(store.frame(record.hash_a)[0]) == record.hash_a
        assert frame_hash(store.frame(record.hash_b)[0]) == record.hash_b
        assert record.goal == GOAL and record.labeler_id.startswith("OracleLabeler(")
    # Only pairs the teacher was asked were stored.
    assert _unordered(stored) <= _unordered(_pairs(first_log.read_text().splitlines()))
    expected_resumed = sum(  # what the dataset keeps: answered pairs of two different frames
        r.preference != -1 and not np.array_equal(store.frame(r.hash_a)[0], store.frame(r.hash_b)[0]) for r in records
    )
    store.close()

    # Run 2 replays the same frames with the same store: it resumes every label and asks nothing twice.
    process, lines = _start(tmp_path, db, second_log, 40, "sync")
    assert process.wait(timeout=120) == 0
    out = {}
    while not lines.empty():
        line = lines.get()
        if line.startswith(("resumed", "finished")):
            kind, metrics = line.split(" ", 1)
            out[kind] = json.loads(metrics)
    assert out["resumed"]["labels_used"] == expected_resumed > 0
    assert out["resumed"]["queries_issued"] == len(records)
    assert out["resumed"]["reward_model/updates"] == 1  # trained on the resumed labels before any step
    asked = second_log.read_text().splitlines() if second_log.exists() else []
    assert not _unordered(_pairs(asked)) & _unordered(stored)
    assert out["finished"]["queries_sent"] == len(asked)
    # Pairs already answered are not drawn again: no budget slot goes to a pair the store answers.
    assert out["finished"]["queries_cached"] == 0 and out["finished"]["queries_issued"] > len(records)


def test_every_answer_is_committed_with_its_query_and_compressed_frames(tmp_path):
    store = LabelStore(tmp_path / "labels.sqlite")
    labeler = OracleLabeler()
    env = VLMRewardWrapper(
        gym.make("vlmrw/CartPoleAngle-v0", render_mode="rgb_array"), goal=GOAL, labeler=labeler, label_store=store,
        seed=0, asynchronous=False, seed_steps=10, query_every=10, pairs_per_query=5,
    )
    before = time.time()
    env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(20):
        env.step(env.action_space.sample())
    after = time.time()
    metrics = env.learner.metrics
    records = store.records(GOAL, labeler.labeler_id, labeler.prompt_version)
    # A pair drawn twice is stored once, and answered from the store if it was already there.
    assert 0 < len(records) <= metrics["queries_answered"]
    assert metrics["queries_answered"] + metrics["queries_cached"] == metrics["queries_issued"]
    for record in records:
        assert record.preference in (-1, 0, 1) and record.raw == str(record.preference)
        assert record.latency_s >= 0 and before <= record.created <= after  # stamped when answered
        frame, reward_input = store.frame(record.hash_a)
        assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8 and reward_input is None
    with sqlite3.connect(tmp_path / "labels.sqlite") as raw:
        sizes = [n for (n,) in raw.execute("SELECT length(frame) FROM frames")]
    assert max(sizes) < 64 * 64 * 3 / 4  # rendered frames compress well
    env.close()
    store.close()
