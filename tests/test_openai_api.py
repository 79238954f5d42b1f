"""OpenAICompatibleLabeler against a real ``python -m llama_cpp.server`` on loopback, serving a tiny VLM."""

import base64
import io
import socket
import subprocess
import sys
import time
import urllib.request

import gymnasium as gym
import numpy as np
import pytest
from PIL import Image
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback

pytest.importorskip("llama_cpp.server.app", reason="needs llama-cpp-python[server]")

from conftest import GOAL  # noqa: E402
from scripted_server import ScriptedServer  # noqa: E402
from tiny_models import write_tiny_vlm  # noqa: E402
from vlm_reward_wrappers import VLMRewardWrapper  # noqa: E402
from vlm_reward_wrappers.cli import build_parser, make_labeler  # noqa: E402
from vlm_reward_wrappers.labelers import (  # noqa: E402
    NO_PREFERENCE,
    ChatPreferenceLabeler,
    LabelerRefusedError,
    LabelerUnavailableError,
    OpenAICompatibleLabeler,
    Query,
)
from vlm_reward_wrappers.labelers.backends import OpenAICompatibleBackend  # noqa: E402
from vlm_reward_wrappers.labelling_service import LabellingService, PreferenceJob, RetryPolicy  # noqa: E402
from vlm_reward_wrappers.label_store import LabelStore  # noqa: E402

KEY_ENV = "VLMRW_TEST_API_KEY"
KEY = "test-key-not-a-secret"
# Fast failure in tests: few tokens; and one retry with a short backoff for the labelling service.
FAST = dict(api_key_env=KEY_ENV, timeout_s=30, max_analysis_tokens=16)
RETRY = RetryPolicy(max_retries=1, backoff_s=0.05)


def _service(labeler, retry=RETRY):
    """A synchronous labelling service over ``labeler``: submit returns once every job is answered or dropped."""
    return LabellingService(labeler, GOAL, LabelStore(), retry, asynchronous=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """``python -m llama_cpp.server`` in a subprocess on 127.0.0.1, with the tiny VLM and an API key."""

    def __init__(self, model, projector, log_path, startup_s: float = 60.0):
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--clip_model_path", str(projector),
             "--chat_format", "mtmd", "--host", "127.0.0.1", "--port", str(self.port), "--api_key", KEY,
             "--n_ctx", "2048", "--n_threads", "1", "--n_threads_batch", "1", "--verbose", "False"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + startup_s
        while not self._up():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"llama_cpp.server did not start; its log:\n{open(log_path).read()[-3000:]}")
            time.sleep(0.1)

    def _up(self) -> bool:
        request = urllib.request.Request(f"{self.base_url}/models", headers={"Authorization": f"Bearer {KEY}"})
        try:
            with urllib.request.urlopen(request, timeout=1):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    return write_tiny_vlm(tmp_path_factory.mktemp("tiny-vlm"))


@pytest.fixture
def start_server(tiny_vlm, tmp_path):
    """Starts servers on demand; every one is killed at teardown, whatever the test did."""
    servers = []

    def start():
        servers.append(LlamaServer(*tiny_vlm, tmp_path / f"server{len(servers)}.log"))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def _queries(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Query(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8), rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
            for _ in range(n)]


@pytest.mark.parametrize("two_stage", [True, False])
def test_queries_to_a_real_server_return_well_formed_preferences(start_server, api_key, two_stage):
    server = start_server()
    labeler = OpenAICompatibleLabeler(server.base_url, "tiny", two_stage=two_stage, max_concurrency=3, **FAST)
    assert labeler.max_concurrency == 3
    q1, q2 = _queries(2)
    answers = labeler.label([q1, q2, q1], GOAL)
    assert len(answers) == 3 and answers[0] == answers[2]  # in order; temperature 0 is deterministic
    # The random model writes gibberish, which must read as no preference, its text kept.
    assert all(answer.preference == NO_PREFERENCE and answer.raw for answer in answers)
    assert ("[answer] " in answers[0].raw) == two_stage


def test_a_missing_api_key_is_refused_and_not_retried(start_server, monkeypatch):
    server = start_server()
    monkeypatch.delenv(KEY_ENV, raising=False)
    labeler = OpenAICompatibleLabeler(server.base_url, "tiny", **FAST)
    with pytest.raises(LabelerRefusedError, match="HTTP 401"):
        labeler.label(_queries(1), GOAL)
    service = _service(labeler, RetryPolicy(max_retries=3, backoff_s=0.05))
    service.submit([PreferenceJob(query) for query in _queries(1)])
    assert service.counts["sent"] == 1 and service.counts["failed_calls"] == 1 and service.counts["dropped"] == 1
    assert KEY not in labeler.labeler_id and KEY not in repr(vars(labeler)) and KEY not in repr(vars(labeler.backend))


def test_a_server_that_is_down_raises_a_clear_error_and_is_retried_then_dropped():
    labeler = OpenAICompatibleLabeler(f"http://127.0.0.1:{_free_port()}", "tiny", **FAST)
    assert labeler.backend.url.endswith("/v1/chat/completions")
    with pytest.raises(LabelerUnavailableError, match=r"no answer from .*is the server running"):
        labeler.label(_queries(1), GOAL)
    service = _service(labeler)
    service.submit([PreferenceJob(query) for query in _queries(1)])
    assert service.counts["sent"] == 2 and service.counts["failed_calls"] == 2 and service.counts["dropped"] == 1


def test_training_goes_on_when_the_server_stops_mid_run(start_server, api_key):
    server = start_server()
    labeler = OpenAICompatibleLabeler(server.base_url, "tiny", two_stage=False, max_concurrency=2, **FAST)
    env = VLMRewardWrapper(
        gym.make("vlmrw/CartPoleAngle-v0", render_mode="rgb_array"), goal=GOAL, labeler=labeler, seed=0,
        seed_steps=10, query_every=10, pairs_per_query=4, retry=RETRY,
    )

    class StopServerMidRun(BaseCallback):
        """Stops the server once 4 answers are in; ends training once 4 queries were dropped."""

        stopped_at, answered, deadline = None, 0, time.monotonic() + 60

        def _on_step(self):
            metrics = env.learner.metrics
            if time.monotonic() > self.deadline:  # a guard against a hang, not a timing claim
                return False
            if self.stopped_at is None and metrics["queries_answered"] >= 4:
                server.stop()
                self.stopped_at, self.answered = self.num_timesteps, metrics["queries_answered"]
            time.sleep(0.002)  # leave the labelling thread some of the 2 cores
            return self.stopped_at is None or metrics["queries_dropped"] < 4

    callback = StopServerMidRun()
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=32, n_epochs=1, seed=0)
    model.learn(100_000, callback=callback)
    metrics, stored = env.learner.metrics, len(env.learner.store)
    env.close()
    assert callback.stopped_at is not None and model.num_timesteps > callback.stopped_at
    assert metrics["labeler_failures"] >= 2 and metrics["queries_dropped"] >= 4
    assert metrics["queries_answered"] <= callback.answered + 4  # at most the batch in flight at the stop
    assert 0 < stored <= metrics["queries_answered"]  # answers from before the stop were kept


def test_requests_carry_the_key_images_in_order_and_retry_5xx(api_key):
    """Against a scripted endpoint: what a real server cannot be made to do on cue."""
    replies = iter([(503, {}), (200, {"choices": [{"message": {"content": "Image 2 is closer. 1"}}]})])
    server = ScriptedServer(lambda: next(replies))
    try:
        labeler = OpenAICompatibleLabeler(server.url.removesuffix("/v1") + "/", "my-model", two_stage=False,
                                          query_image_size=32, extra_body={"top_k": 1}, **FAST)
        service = _service(labeler)
        service.submit([PreferenceJob(query) for query in _queries(1)])
        [(_, answer)] = service.poll()
    finally:
        server.stop()
    seen = server.seen
    assert answer.preference == 1 and answer.raw == "Image 2 is closer. 1" and service.counts["failed_calls"] == 1
    assert len(seen) == 2 and seen[0] == seen[1]  # the 503 was retried with the same request
    path, authorization, body = seen[0]
    assert path == "/v1/chat/completions" and authorization == f"Bearer {KEY}"
    assert body["model"] == "my-model" and body["temperature"] == 0.0 and body["top_k"] == 1
    parts = body["messages"][0]["content"]
    kinds = [part["type"] for part in parts]
    images = [i for i, kind in enumerate(kinds) if kind == "image_url"]
    assert len(images) == 2
    for k, at in enumerate(images, start=1):
        assert parts[at - 1]["text"] == f"Image {k}:\n"
        url = parts[at]["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == (32, 32)  # 48 px, shrunk


def test_the_cli_builds_it_from_its_options():
    labeler = make_labeler(build_parser().parse_args(
        ["train", "--labeler", "openai", "--base-url", "http://gpu-box:8000", "--model", "Qwen/Qwen2.5-VL-3B-Instruct",
         "--max-concurrency", "16", "--query-image-size", "448"]
    ))
    backend = labeler.backend
    assert isinstance(labeler, ChatPreferenceLabeler) and labeler.max_concurrency == 16 and labeler.two_stage
    assert isinstance(backend, OpenAICompatibleBackend)
    assert backend.url == "http://gpu-box:8000/v1/chat/completions" and backend.model == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert backend.query_image_size == 448
    pool = make_labeler(build_parser().parse_args(
        ["train", "--labeler", "openai", "--base-url", "http://gpu-1:8000/v1", "http://gpu-2:8000/v1"])).backend
    assert pool.urls == ["http://gpu-1:8000/v1/chat/completions", "http://gpu-2:8000/v1/chat/completions"]


def test_the_audit_runs_against_a_real_server(start_server, api_key, tmp_path):
    from vlm_reward_wrappers.audit import audit, write_report

    server = start_server()
    env = gym.make("vlmrw/CartPoleAngle-v0", render_mode="rgb_array")
    result = audit(env, GOAL, OpenAICompatibleLabeler(server.base_url, "tiny", two_stage=False, **FAST), n_pairs=2)
    env.close()
    assert result.pairs == 2 and result.dropped == 0 and result.throughput_per_s > 0
    assert write_report(result, tmp_path).is_file()
