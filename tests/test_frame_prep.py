"""FramePreparer: reward-model inputs prepared in a worker process are exactly what preparing them in the env
loop gives, whatever happens to the worker, and the worker never outlives the run."""

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from vlm_reward_wrappers import lifecycle
from vlm_reward_wrappers.frames import FramePreparer, resize_frame

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the worker process is started on POSIX systems only")

SHAPE = (90, 120, 3)


@pytest.fixture
def make_preparer():
    """FramePreparers that are closed after the test, their worker killed first (a failed test may leave it
    stopped)."""
    made = []

    def make(*args, **kwargs) -> FramePreparer:
        made.append(FramePreparer(*args, **kwargs))
        return made[-1]

    yield make
    for preparer in made:
        if preparer._process is not None:
            preparer._process.kill()
        preparer.close()


def _frames(n: int, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, *shape), dtype=np.uint8)


def _expected(frames: np.ndarray, size: int = 24) -> np.ndarray:
    return np.stack([resize_frame(frame, size) for frame in frames])


def _results(prepared) -> np.ndarray:
    return np.stack([p.result()[0] for p in prepared])


@pytest.mark.parametrize("memfd", [True, False], ids=["memfd", "temporary-file"])
def test_the_worker_prepares_what_the_loop_would_from_a_reused_array(monkeypatch, memfd):
    if not memfd:
        monkeypatch.delattr(os, "memfd_create", raising=False)  # as on macOS
    preparer = FramePreparer(24, SHAPE)
    frames, rendered = _frames(40), np.empty(SHAPE, dtype=np.uint8)
    prepared = []
    for frame in frames:  # as an env that renders into the same array every step
        np.copyto(rendered, frame)
        prepared.append(preparer.submit(rendered))
    np.testing.assert_array_equal(_results(prepared), _expected(frames))
    assert preparer.in_loop == 0
    process = preparer._process
    preparer.close()
    assert process.poll() == 0 and not lifecycle.is_tracked(preparer)
    preparer.close()  # twice is harmless


def test_a_worker_that_dies_leaves_the_same_inputs_and_a_warning(make_preparer, caplog):
    preparer = make_preparer(24, SHAPE)
    frames = _frames(12)
    prepared = [preparer.submit(frame) for frame in frames[:6]]
    preparer._process.kill()
    with caplog.at_level(logging.WARNING, logger="vlm_reward_wrappers.frames"):
        prepared += [preparer.submit(frame) for frame in frames[6:]]
        np.testing.assert_array_equal(_results(prepared), _expected(frames))
    assert "frame-preparation worker stopped (it exited" in caplog.text
    assert preparer.in_loop >= 6


@pytest.mark.parametrize("waiting_in", ["result", "close"])
def test_a_stuck_worker_is_stopped_after_the_timeout_and_nothing_is_lost(make_preparer, caplog, waiting_in):
    preparer = make_preparer(24, SHAPE, timeout=0.5)
    frames = _frames(3)
    preparer.submit(frames[0]).result()  # the worker has started
    os.kill(preparer._process.pid, signal.SIGSTOP)
    prepared = [preparer.submit(frame) for frame in frames]
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="vlm_reward_wrappers.frames"):
        if waiting_in == "close":
            preparer.close()
        np.testing.assert_array_equal(_results(prepared), _expected(frames))
    assert time.monotonic() - started < 5
    assert "no input came back in 0.5 s" in caplog.text


def test_frames_beyond_the_slots_or_of_another_shape_are_prepared_in_the_loop_at_once(make_preparer):
    preparer = make_preparer(24, SHAPE, max_bytes=1)  # two slots
    preparer.submit(_frames(1)[0]).result()
    os.kill(preparer._process.pid, signal.SIGSTOP)  # nothing comes back while it is stopped
    frames, other = _frames(4), _frames(1, (60, 80, 3))[0]
    prepared = [preparer.submit(frame) for frame in frames] + [preparer.submit(other)]
    assert [p._value is not None for p in prepared] == [False, False, True, True, True]  # nothing waited
    os.kill(preparer._process.pid, signal.SIGCONT)
    np.testing.assert_array_equal(_results(prepared[:4]), _expected(frames))
    np.testing.assert_array_equal(prepared[4].result()[0], resize_frame(other, 24))
    assert preparer.in_loop == 3


def test_a_frame_already_of_the_input_size_is_kept_as_it_was():
    preparer = FramePreparer(24, (24, 24, 3))  # nothing to resize: no worker
    frame = _frames(1, (24, 24, 3))[0]
    prepared = preparer.submit(frame)
    kept = frame.copy()
    frame[:] = 0  # the env renders the next step into the same array
    np.testing.assert_array_equal(prepared.result()[0], kept)
    preparer.close()


def test_ctrl_c_in_a_terminal_does_not_reach_the_worker(make_preparer):
    # A terminal sends Ctrl-C to its foreground process group: the run's, which the worker is not in.
    preparer = make_preparer(24, SHAPE)
    assert os.getpgid(preparer._process.pid) != os.getpgrp()


def test_a_forked_child_lets_go_of_the_worker(make_preparer):
    preparer = make_preparer(24, SHAPE, timeout=5)
    frames = _frames(4)
    preparer.submit(frames[0]).result()
    child = os.fork()
    if child == 0:  # as a SubprocVecEnv worker started with "fork": it must not read the parent's answers
        os._exit(0 if preparer._process is None else 1)
    assert os.waitpid(child, 0)[1] == 0
    np.testing.assert_array_equal(_results([preparer.submit(frame) for frame in frames]), _expected(frames))
    process = preparer._process
    started = time.monotonic()
    preparer.close()
    assert process.poll() == 0 and time.monotonic() - started < 2  # its stdin closed: no copy held it open


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_worker_ends_when_the_run_is_killed(tmp_path):
    script = textwrap.dedent("""
        import os, signal, numpy as np
        from vlm_reward_wrappers.frames import FramePreparer
        preparer = FramePreparer(24, (90, 120, 3))
        preparer.submit(np.zeros((90, 120, 3), np.uint8)).result()
        print(preparer._process.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # no close(), no exit hook
    """)
    with open(tmp_path / "stderr", "w") as stderr:  # the worker shares it: a pipe would wait for the worker too
        result = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=stderr, text=True,
                                timeout=120)
    assert result.returncode == -signal.SIGKILL, (tmp_path / "stderr").read_text()[-2000:]
    pid = int(result.stdout)
    deadline = time.monotonic() + 10
    while _running(pid):
        assert time.monotonic() < deadline, f"the worker {pid} outlived the run by 10 s"
        time.sleep(0.1)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended, and waits to be reaped
    except FileNotFoundError:
        return False
