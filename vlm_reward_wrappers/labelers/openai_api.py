"""OpenAICompatibleLabeler: RL-VLM-F's queries to any ``/v1/chat/completions`` server.

llama.cpp's server (``llama-server`` or ``python -m llama_cpp.server``), vLLM, Ollama, SGLang and
hosted APIs all speak this protocol: it is how labelling scales to GPUs and clusters. Only the
standard library is used (urllib), so the labeler adds no dependency.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Sequence

from vlm_reward_wrappers.labelers.base import Answer, Query
from vlm_reward_wrappers.labelers.chat import ChatLabeler

logger = logging.getLogger(__name__)

#: HTTP statuses worth retrying: the server is overloaded or restarting, not refusing the request.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class LabelerUnavailableError(ConnectionError):
    """The server could not be reached, or kept failing, after all retries."""


class OpenAICompatibleLabeler(ChatLabeler):
    """RL-VLM-F's preference query over an OpenAI-compatible chat-completions endpoint.

    Frames are sent as PNG ``data:`` URIs. Queries of one :meth:`label` call run concurrently
    (``batch_size`` = ``max_concurrency``). A request that fails on the connection, times out or gets
    a 408/429/5xx is retried with exponential backoff; after ``max_retries`` retries
    :class:`LabelerUnavailableError` is raised and the learner retries, then drops and counts the
    batch, while training goes on. Other HTTP errors (a wrong model name, a bad key) raise at once.

    :param base_url: the API root, e.g. "http://127.0.0.1:8080/v1" (a bare "http://host:port" gets
        "/v1"); requests go to ``{base_url}/chat/completions``.
    :param model: the model name the server knows (vLLM: the served name; llama.cpp: any).
    :param api_key_env: environment variable holding the API key, read at each request and sent as
        a Bearer token when set; the key itself is never an argument, stored or logged.
    :param timeout_s: seconds to wait for one response (a CPU VLM needs minutes, see the README).
    :param max_concurrency: requests in flight at once.
    :param max_retries: retries of one request before giving up.
    :param retry_backoff_s: first retry delay; it doubles on each retry.
    :param two_stage: RL-VLM-F's analysis-then-answer query (True) or the answer alone.
    :param layout: "interleaved" (servers keep text and images in order) or "captioned" for a server
        whose chat template puts images first (llama_cpp.server with a LLaVA-1.5 ``chat_format``).
    :param image_size: longer side in pixels of the images sent; None sends frames as they are.
    :param max_analysis_tokens: token limit of the stage-1 analysis.
    :param max_answer_tokens: token limit of the answer line.
    :param extra_body: further request fields, e.g. ``{"top_k": 1}`` or vLLM's ``guided_choice``.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: Optional[str] = "OPENAI_API_KEY",
        timeout_s: float = 300.0,
        max_concurrency: int = 4,
        max_retries: int = 2,
        retry_backoff_s: float = 1.0,
        two_stage: bool = True,
        layout: str = "interleaved",
        image_size: Optional[int] = None,
        max_analysis_tokens: int = 256,
        max_answer_tokens: int = 16,
        extra_body: Optional[Dict[str, Any]] = None,
    ) -> None:
        super().__init__(two_stage, layout, image_size, max_analysis_tokens, max_answer_tokens)
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        base_url = base_url.rstrip("/")
        if urllib.parse.urlparse(base_url).path in ("", "/"):
            base_url += "/v1"
        self.base_url = base_url
        self.url = f"{base_url}/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.max_concurrency = max_concurrency
        self.batch_size = max_concurrency
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s
        self.extra_body = dict(extra_body or {})

    @property
    def labeler_id(self) -> str:
        # The endpoint is left out: the same model behind another address gives the same answers.
        return (
            f"OpenAICompatibleLabeler(model={self.model}, layout={self.layout}, image_size={self.image_size}, "
            f"extra_body={json.dumps(self.extra_body, sort_keys=True)})"
        )

    def label(self, queries: Sequence[Query], goal: str) -> List[Answer]:
        if len(queries) <= 1:
            return [self.ask(query, goal) for query in queries]
        pool = ThreadPoolExecutor(min(self.max_concurrency, len(queries)), thread_name_prefix="vlm-request")
        try:
            futures = [pool.submit(self.ask, query, goal) for query in queries]
            return [future.result() for future in futures]
        finally:
            # After a failure the whole call is retried: queries not started yet need not be sent now.
            pool.shutdown(wait=True, cancel_futures=True)

    def chat(self, messages: List[Dict], max_tokens: int) -> str:
        body = {**self.extra_body, "model": self.model, "messages": messages, "temperature": 0.0,
                "max_tokens": max_tokens}
        response = self._post(body)
        try:
            return response["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as error:
            raise LabelerUnavailableError(f"{self.url} answered without a message: {str(response)[:300]}") from error

    def _post(self, body: Dict[str, Any]) -> Dict[str, Any]:
        """POST ``body`` as JSON and return the decoded response, retrying transient failures."""
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as error:
                detail = error.read().decode(errors="replace")[:300]
                if error.code not in RETRY_STATUSES:
                    raise RuntimeError(f"{self.url} refused the request: HTTP {error.code}: {detail}") from error
                failure: Exception = error
            except (OSError, json.JSONDecodeError) as error:  # refused, reset, timed out, cut short
                failure = error
            if attempt < self.max_retries:
                delay = self.retry_backoff_s * 2**attempt
                logger.info("request to %s failed (%r), retrying in %.1f s", self.url, failure, delay)
                time.sleep(delay)
        raise LabelerUnavailableError(
            f"no answer from {self.url} after {self.max_retries + 1} attempts ({failure!r}); is the server "
            "running? e.g. `python -m llama_cpp.server --model vlm.gguf --clip_model_path mmproj.gguf "
            "--chat_format mtmd` or `vllm serve <model>`"
        ) from failure
