"""Serving a page: uvicorn on a background thread, loopback by default, an access token otherwise.

Anything bound to an address other than loopback can be reached by other machines, so every request
to it must carry the access token: as ``?token=`` in the first URL (the page then keeps it in a
cookie), a cookie, or an ``Authorization: Bearer`` header. On loopback, requests must name a loopback
host; everywhere, pages of other sites cannot post to it (:func:`add_guards`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import threading
import time
from typing import Any, Optional
from urllib.parse import urlparse

from vlm_reward_wrappers import lifecycle

TOKEN_COOKIE = "vlmrw_token"


def require_web() -> None:
    """ImportError saying how to install the web extra, if FastAPI or uvicorn is missing."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f"the label browser and the human labeler need FastAPI and uvicorn ({error.name} is missing): "
            "pip install 'vlm-reward-wrappers[web]'"
        ) from error


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def access_token(host: str, token: Optional[str]) -> Optional[str]:
    """The token requests must carry: ``token`` if given; a new random one off loopback; else None."""
    if token is not None:
        if len(token) < 8:
            raise ValueError("an access token must have at least 8 characters (or pass None for a random one)")
        return token
    return None if is_loopback(host) else secrets.token_urlsafe(18)


def token_cookie(token: str) -> str:
    """The cookie a server keeps its token in: named after the token, since cookies are shared by every
    port of a host (an inspect page and a labelling page side by side)."""
    return f"{TOKEN_COOKIE}_{hashlib.sha256(token.encode()).hexdigest()[:10]}"


def add_guards(app: Any, token: Optional[str]) -> None:
    """Guard ``app`` against requests that are not its user's.

    - With ``token``: every request must carry it (401 otherwise).
    - Without (loopback): the Host header must name a loopback address, so another site cannot reach
      the page through DNS rebinding (400 otherwise).
    - Always: a request that changes something, sent by a page of another origin, is refused (403).
    """
    from starlette.responses import PlainTextResponse

    cookie = None if token is None else token_cookie(token)

    @app.middleware("http")
    async def guard(request, call_next):
        if token is None and not is_loopback(request.url.hostname or ""):
            return PlainTextResponse("this page answers on loopback addresses only", status_code=400)
        origin = request.headers.get("origin")
        if request.method not in ("GET", "HEAD") and origin and urlparse(origin).netloc != request.headers.get("host"):
            return PlainTextResponse("requests from other sites are refused", status_code=403)
        if token is not None:
            header = request.headers.get("authorization", "")
            given = (request.query_params.get("token") or request.cookies.get(cookie)
                     or (header[7:] if header.lower().startswith("bearer ") else ""))
            if not secrets.compare_digest(given.encode(), token.encode()):
                return PlainTextResponse("this page needs its access token: open the URL with ?token=... that "
                                         "the server printed", status_code=401)
        response = await call_next(request)
        if token is not None and request.query_params.get("token"):  # the page's own requests then carry it
            response.set_cookie(cookie, token, httponly=True, samesite="strict")
        return response


class BackgroundServer:
    """A FastAPI app served by uvicorn on a daemon thread.

    :param app: the app.
    :param host: address to bind; loopback by default.
    :param port: port to bind; 0 picks a free one (see :attr:`port`).
    :param token: the access token its requests carry (see :func:`add_token_guard`), shown in :attr:`url`.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, token: Optional[str] = None) -> None:
        import uvicorn

        self.host, self.token = host, token
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="vlm-web", daemon=True)
        lifecycle.track(self)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if not self._thread.is_alive():
                raise OSError(f"could not serve on {host}:{port} (is the port in use? pass another port, or 0)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the web server on {host}:{port} did not start within 15 s")
            time.sleep(0.02)
        self.port: int = self._server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        """The page's address, with the token where one is needed."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    def close(self) -> None:
        """Stop serving (within a second or so, 5 s at most). Later calls do nothing."""
        self._server.should_exit = True
        self._thread.join(timeout=5)
        lifecycle.untrack(self)
