"""The human labeler's page: the goal and two frames side by side, answered with a click or a key.

Routes: ``/`` (the page), ``/api/next`` (the pair a person should answer), ``/pair/<id>/<a|b>.png``
(its frames, from memory: no request reads a file), ``/api/answer``, ``/api/renew`` (an open page
keeps its pair) and ``/api/release`` (a closing page gives its pair back).
"""


import json
import re
from typing import Any, Optional

from vlm_reward_wrappers.labelers.pair_queue import CHOICES, PairQueue
from vlm_reward_wrappers.web.pages import page
from vlm_reward_wrappers.web.server import BackgroundServer, add_guards, require_web

_ID = re.compile(r"[0-9a-f]{32}")
_PERSON = re.compile(r"[A-Za-z0-9_.-]{1,64}")

_SCRIPT = """
const tab = sessionStorage.getItem('tab') || Math.random().toString(36).slice(2, 14);
sessionStorage.setItem('tab', tab);
const $ = (id) => document.getElementById(id);
$('name').value = localStorage.getItem('name') || '';
$('name').onchange = () => localStorage.setItem('name', $('name').value);
let current = null, mine = 0;
const loaded = (img) => new Promise((ok) => { if (img.complete && img.naturalWidth) ok(); else { img.onload = ok; img.onerror = ok; } });
const post = (path, data) => fetch(path, {method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(data)});
const say = (text) => { $('message').textContent = text; };
async function next() {
  let data;
  try {
    const response = await post('api/next', {person: tab});
    if (!response.ok) throw new Error('the server answered ' + response.status);
    data = await response.json();
  } catch (error) {
    say('Cannot reach the labelling server (' + error.message + '): trying again.');
    setTimeout(next, 2000); return;
  }
  $('waiting').textContent = data.waiting;
  if (!data.pair_id) {
    current = null; delete document.body.dataset.pair; $('pair').hidden = true; $('idle').hidden = false;
    setTimeout(next, 1000); return;
  }
  $('a').src = 'pair/' + data.pair_id + '/a.png'; $('b').src = 'pair/' + data.pair_id + '/b.png';
  $('goal').textContent = data.goal;
  await Promise.all([loaded($('a')), loaded($('b'))]);
  current = data.pair_id; document.body.dataset.pair = current; $('idle').hidden = true; $('pair').hidden = false;
}
async function answer(choice) {
  if (!current) return;
  const id = current; current = null; delete document.body.dataset.pair;
  let response;
  try {
    response = await post('api/answer', {pair_id: id, person: tab, name: $('name').value, choice: choice});
  } catch (error) {  // not sent: the pair stays, answer again
    current = id; document.body.dataset.pair = id; say('Your answer did not reach the server: please answer again.');
    return;
  }
  if (response.ok) { mine += 1; $('mine').textContent = mine; say(''); }
  else if (response.status === 409) say('That pair had been answered or taken back (it waited too long); here is the next one.');
  else { current = id; document.body.dataset.pair = id; say('The server refused the answer (' + response.status + ').'); return; }
  next();
}
document.addEventListener('keydown', (e) => {
  if (e.target.tagName === 'INPUT') return;
  const choice = {ArrowLeft: 'left', '1': 'left', ArrowRight: 'right', '2': 'right', ' ': 'tie', ArrowDown: 'tie', '0': 'tie'}[e.key];
  if (choice) { e.preventDefault(); answer(choice); }
});
for (const choice of ['left', 'right', 'tie']) $(choice).onclick = () => answer(choice);
// An open page keeps its pair; a closed one gives it back at once.
setInterval(() => { if (current) post('api/renew', {pair_id: current, person: tab}).catch(() => {}); }, RENEW_MS);
window.addEventListener('pagehide', () => {
  if (current) navigator.sendBeacon('api/release', JSON.stringify({pair_id: current, person: tab}));
});
next();
"""

_BODY = """<h1>Which image is closer to the goal?</h1>
<p>Goal: <b id="goal"></b></p>
<div id="pair" hidden><div style="display:flex;gap:16px">
<figure><img id="a" alt="left image" style="max-width:45vw;border:1px solid #ccc"><figcaption>left (1 or &larr;)</figcaption></figure>
<figure><img id="b" alt="right image" style="max-width:45vw;border:1px solid #ccc"><figcaption>right (2 or &rarr;)</figcaption></figure></div>
<p><button id="left">Left is closer</button> <button id="right">Right is closer</button>
<button id="tie">Can't tell (space)</button></p></div>
<p id="idle" hidden>No pair is waiting: the next ones appear here as the agent trains.</p>
<p class="muted">Pairs waiting: <span id="waiting">0</span>; answered by you: <span id="mine">0</span>.
Your name (kept with your answers): <input id="name" size="16" pattern="[A-Za-z0-9_.\\-]*"></p>
<p id="message" class="muted"></p>"""


def make_labelling_app(queue: PairQueue, token: Optional[str] = None) -> Any:
    """The labelling page of ``queue`` as a FastAPI app (requests must carry ``token`` if given)."""
    require_web()
    from fastapi import Body, FastAPI, HTTPException, Request
    from fastapi.responses import HTMLResponse, Response

    app = FastAPI(title="vlm-reward labelling", docs_url=None, redoc_url=None, openapi_url=None)
    add_guards(app, token)

    def person_id(person: str) -> str:
        if not _PERSON.fullmatch(person or ""):
            raise HTTPException(400, "person must be 1-64 letters, digits, '_', '.' or '-'")
        return person

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        # Renewed three times a lease: one lost request does not cost the pair.
        script = _SCRIPT.replace("RENEW_MS", str(int(queue.lease_s * 1000 / 3)))
        return page("Label pairs", _BODY + f"<script>{script}</script>")

    # A POST: a GET could be sent by an <img> on any site, and leasing changes the queue.
    @app.post("/api/next")
    def next_pair(person: str = Body(..., embed=True)) -> dict:
        pair = queue.next(person_id(person))
        return {"pair_id": None if pair is None else pair.pair_id, "goal": None if pair is None else pair.goal,
                "waiting": len(queue)}

    @app.get("/pair/{pair_id}/{side}.png")
    def frame(pair_id: str, side: str) -> Response:
        pair = queue.get(pair_id) if _ID.fullmatch(pair_id) and side in ("a", "b") else None
        if pair is None:
            raise HTTPException(404, "no such pair waiting")
        return Response(pair.png_a if side == "a" else pair.png_b, media_type="image/png")

    @app.post("/api/answer")
    def answer(pair_id: str = Body(...), person: str = Body(...), choice: str = Body(...), name: str = Body("")) -> dict:
        if choice not in CHOICES:
            raise HTTPException(400, f"choice must be one of {sorted(CHOICES)}")
        if name and not _PERSON.fullmatch(name):
            raise HTTPException(400, "name must be 1-64 letters, digits, '_', '.' or '-'")
        if not queue.answer(pair_id, person_id(person), choice, name):
            raise HTTPException(409, "this pair was answered already, or taken back after waiting too long")
        return {"ok": True}

    @app.post("/api/renew")
    def renew(pair_id: str = Body(...), person: str = Body(...)) -> dict:
        return {"held": queue.renew(pair_id, person_id(person))}

    @app.post("/api/release", status_code=204, response_class=Response)
    async def release(request: Request) -> Response:
        try:  # sendBeacon posts text/plain
            data = json.loads(await request.body())
            queue.release(str(data["pair_id"]), person_id(str(data["person"])))
        except (ValueError, KeyError, TypeError) as error:
            raise HTTPException(400, "expected {pair_id, person}") from error
        return Response(status_code=204)

    return app


def serve_labelling_page(queue: PairQueue, host: str, port: int, token: Optional[str]) -> BackgroundServer:
    """Serve the labelling page of ``queue`` (see :class:`~vlm_reward_wrappers.labelers.human.HumanLabeler`)."""
    return BackgroundServer(make_labelling_app(queue, token), host, port, token)
