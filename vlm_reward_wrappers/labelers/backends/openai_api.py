"""OpenAICompatibleBackend: any ``/v1/chat/completions`` server.

llama.cpp's server (``llama-server`` or ``python -m llama_cpp.server``), vLLM, Ollama, SGLang and
hosted APIs all speak this protocol: it is how labelling scales to GPUs and clusters. Only the
standard library is used (urllib), so the backend adds no dependency.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Optional, Sequence, Union

from vlm_reward_wrappers.labelers.backends.base import ChatBackend
from vlm_reward_wrappers.labelers.base import LabelerRefusedError, LabelerUnavailableError

logger = logging.getLogger(__name__)

#: HTTP statuses that say the server is overloaded or restarting, not refusing the request: worth retrying.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})

_SERVE_HINT = (
    "is the server running? e.g. `python -m llama_cpp.server --model vlm.gguf --clip_model_path mmproj.gguf "
    "--chat_format mtmd` or `vllm serve <model>`"
)


def _endpoint(base_url: str) -> str:
    """The chat-completions URL of an API root."""
    if not isinstance(base_url, str) or urllib.parse.urlparse(base_url).scheme not in ("http", "https"):
        raise ValueError(f"base_url must be an http(s) URL such as 'http://127.0.0.1:8000/v1', got {base_url!r}")
    base_url = base_url.rstrip("/")
    if urllib.parse.urlparse(base_url).path in ("", "/"):
        base_url += "/v1"
    return f"{base_url}/chat/completions"


class OpenAICompatibleBackend(ChatBackend):
    """Chat requests to one or several OpenAI-compatible servers, frames sent as PNG ``data:`` URIs.

    Several servers (replicas of the same model: vLLM or llama-server on several GPUs or machines)
    share the requests in turn. A server that fails on the connection, times out or answers 408/429/5xx
    is skipped for ``cooldown_s`` and the request goes to the next one; when every server has failed it,
    :class:`~vlm_reward_wrappers.labelers.base.LabelerUnavailableError` is raised, which the labelling
    service retries within its deadline (no retry loop here). Other HTTP errors (a wrong model name, a
    bad key) raise :class:`~vlm_reward_wrappers.labelers.base.LabelerRefusedError`, which it does not retry.

    :param base_url: the API root, e.g. "http://127.0.0.1:8080/v1" (a bare "http://host:port" gets
        "/v1"), or a list of them; requests go to ``{base_url}/chat/completions``.
    :param model: the model name the server knows (vLLM: the served name; llama.cpp: any).
    :param api_key_env: environment variable holding the API key, read at each request and sent as
        a Bearer token when set; the key itself is never an argument, stored or logged.
    :param timeout_s: seconds to wait for one response (a CPU VLM needs minutes, docs/labelers.md).
    :param max_concurrency: requests in flight at once, over all servers (vLLM and ``llama-server
        --parallel`` batch them).
    :param cooldown_s: seconds a server that failed is skipped.
    :param layout: "interleaved" (servers keep text and images in order) or "captioned" for a server
        whose chat template puts images first (llama_cpp.server with a LLaVA-1.5 ``chat_format``).
    :param query_image_size: longer side in pixels of the images sent; None sends frames as they are.
    :param extra_body: further request fields, e.g. ``{"top_k": 1}`` or vLLM's ``guided_choice``.
    """

    def __init__(
        self,
        base_url: Union[str, Sequence[str]],
        model: str,
        api_key_env: Optional[str] = "OPENAI_API_KEY",
        timeout_s: float = 300.0,
        max_concurrency: int = 4,
        cooldown_s: float = 30.0,
        layout: str = "interleaved",
        query_image_size: Optional[int] = None,
        extra_body: Optional[Dict[str, Any]] = None,
    ) -> None:
        super().__init__(layout, query_image_size)
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        #: The chat-completions URL of every server.
        self.urls = [_endpoint(url) for url in ([base_url] if isinstance(base_url, str) else base_url)]
        if not self.urls:
            raise ValueError("base_url names no server")
        self.cooldown_s = cooldown_s
        self._down_until = [0.0] * len(self.urls)
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.max_concurrency = max_concurrency
        self.extra_body = dict(extra_body or {})

    @property
    def backend_id(self) -> str:
        # The endpoint is left out: the same model behind another address gives the same answers.
        return (
            f"OpenAICompatibleBackend(model={self.model}, layout={self.layout}, "
            f"query_image_size={self.query_image_size}, extra_body={json.dumps(self.extra_body, sort_keys=True)})"
        )

    @property
    def url(self) -> str:
        """The first server's chat-completions URL."""
        return self.urls[0]

    def chat(self, messages: List[Dict], max_tokens: int) -> str:
        body = {**self.extra_body, "model": self.model, "messages": messages, "temperature": 0.0,
                "max_tokens": max_tokens}
        failures = []
        for index in self._order():
            url = self.urls[index]
            try:
                response = self._post(url, body)
                return response["choices"][0]["message"]["content"] or ""
            except (KeyError, IndexError, TypeError):
                failures.append(f"{url} answered without a message: {str(response)[:300]}")
            except LabelerUnavailableError as error:
                failures.append(str(error))
            with self._lock:
                self._down_until[index] = time.monotonic() + self.cooldown_s
            if len(self.urls) > 1:
                logger.warning("%s failed; skipping it for %.0f s: %s", url, self.cooldown_s, failures[-1])
        raise LabelerUnavailableError("; ".join(failures))

    def _order(self) -> List[int]:
        """Every server once, starting at the next in turn, those skipped for a recent failure last."""
        with self._lock:
            start, now = next(self._turn) % len(self.urls), time.monotonic()
            turn = [(start + k) % len(self.urls) for k in range(len(self.urls))]
            return sorted(turn, key=lambda i: self._down_until[i] > now)  # stable: healthy ones keep their turn

    def _post(self, url: str, body: Dict[str, Any]) -> Dict[str, Any]:
        """POST ``body`` as JSON to ``url`` once and return the decoded response."""
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:300]
            if error.code in RETRY_STATUSES:
                raise LabelerUnavailableError(f"{url} is overloaded: HTTP {error.code}: {detail}") from error
            raise LabelerRefusedError(f"{url} refused the request: HTTP {error.code}: {detail}") from error
        except (OSError, json.JSONDecodeError) as error:  # refused, reset, timed out, cut short
            raise LabelerUnavailableError(f"no answer from {url} ({error!r}); {_SERVE_HINT}") from error
