"""The label browser (``vlm-reward inspect STORE``): every answer of a label store, page by page.

Each pair is shown as the labeler saw it, with the goal, the labeler's text (its analysis and raw
answer), the parsed preference, the true reward's preference where the env gave it, and the latency;
filters pick wrong answers, abstentions, a labeler or a time span; a plot shows label accuracy over
time. The store is opened read-only, so a running training run can go on writing to it. Frames are
loaded lazily, one page at a time, so stores of any size stay quick.
"""


import html
import re
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union
from urllib.parse import urlencode

import numpy as np

from vlm_reward_wrappers.frames import png_bytes
from vlm_reward_wrappers.label_store import NO_PREFERENCE, decode_array
from vlm_reward_wrappers.web.pages import page, pair_card
from vlm_reward_wrappers.web.server import BackgroundServer, access_token, add_guards, require_web

#: Pairs per page.
PAGE_SIZE = 50
#: Points of the accuracy-over-time plot.
ACCURACY_BINS = 40
SHOWS = ("all", "wrong", "correct", "abstained")

# The true preference of a row, in SQL: 1 if the second frame's true reward is higher, 0 if the
# first's, NULL if unknown or tied (as metrics.gt_preference).
_TRUTH = ("(CASE WHEN gt_reward_a IS NULL OR gt_reward_b IS NULL OR gt_reward_a = gt_reward_b THEN NULL"
          " WHEN gt_reward_b > gt_reward_a THEN 1 ELSE 0 END)")
_SHOW_CLAUSES = {
    "all": "",
    "wrong": f"preference != {NO_PREFERENCE} AND {_TRUTH} IS NOT NULL AND preference != {_TRUTH}",
    "correct": f"preference != {NO_PREFERENCE} AND preference = {_TRUTH}",
    "abstained": f"preference = {NO_PREFERENCE}",
}
_HASH = re.compile(r"[0-9a-f]{32}")


class StoreReader:
    """Read-only queries of a label store for the browser.

    :param path: the store's SQLite file.
    """

    def __init__(self, path: Union[str, Path]) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no label store at {path}: pass the file given to LabelStore(path)")
        try:
            self._db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(labels)")}
        except sqlite3.DatabaseError as error:
            raise ValueError(f"{path} is not a label store ({error})") from error
        if "preference" not in columns:
            raise ValueError(f"{path} is not a label store: it has no labels table")
        # Stores written before the true rewards were kept have no such columns: read them as unknown.
        self._gt = "gt_reward_a, gt_reward_b" if "gt_reward_a" in columns else "NULL AS gt_reward_a, NULL AS gt_reward_b"
        self.path = path

    def _where(self, show: str = "all", labeler: str = "", since: Optional[float] = None,
               until: Optional[float] = None) -> Tuple[str, list]:
        if show not in SHOWS:
            raise ValueError(f"show must be one of {SHOWS}, got {show!r}")
        clauses, params = [], []
        if _SHOW_CLAUSES[show]:
            clauses.append(_SHOW_CLAUSES[show])
        if labeler:
            clauses.append("labeler_id = ?")
            params.append(labeler)
        if since is not None:
            clauses.append("created >= ?")
            params.append(since)
        if until is not None:
            clauses.append("created <= ?")
            params.append(until)
        return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params

    def _rows(self, sql: str, params: Any = ()) -> List[tuple]:
        """Rows of ``sql``, which reads the answers as the table ``l``."""
        cte = ("WITH l AS (SELECT id, hash_a, hash_b, goal, labeler_id, preference, soft, raw, latency_s, created,"
               f" {self._gt} FROM labels) ")
        return self._db.execute(cte + sql.replace("{truth}", _TRUTH), params).fetchall()

    def count(self, **filters: Any) -> int:
        """Answers matching the filters (``show``, ``labeler``, ``since``, ``until``; times in Unix seconds)."""
        where, params = self._where(**filters)
        return self._rows(f"SELECT COUNT(*) FROM l {where}", params)[0][0]

    def labelers(self) -> List[Dict[str, Any]]:
        """Per labeler: answers, abstentions, answers the true reward can judge, and label accuracy on those."""
        rows = self._rows(
            f"SELECT labeler_id, COUNT(*), SUM(preference = {NO_PREFERENCE}),"
            f" SUM(preference != {NO_PREFERENCE} AND {{truth}} IS NOT NULL), SUM(preference = {{truth}})"
            " FROM l GROUP BY labeler_id ORDER BY labeler_id")
        return [{"labeler_id": name, "answers": n, "abstained": abstained or 0, "judged": judged or 0,
                 "label_accuracy": (correct or 0) / judged if judged else None}
                for name, n, abstained, judged, correct in rows]

    def page(self, offset: int, limit: int = PAGE_SIZE, **filters: Any) -> List[Dict[str, Any]]:
        """Answers ``offset`` to ``offset + limit`` (oldest first) matching the filters."""
        where, params = self._where(**filters)
        names = ("id", "hash_a", "hash_b", "goal", "labeler_id", "preference", "soft", "raw", "latency_s", "created",
                 "gt_reward_a", "gt_reward_b")
        rows = self._rows(f"SELECT {', '.join(names)}, {{truth}} FROM l {where} ORDER BY id LIMIT ? OFFSET ?",
                          [*params, limit, offset])
        return [dict(zip((*names, "truth"), row)) for row in rows]

    def accuracy_over_time(self, bins: int = ACCURACY_BINS, **filters: Any) -> List[Tuple[float, float, int]]:
        """(time of the bin's last answer, label accuracy, answers judged) over answers the true reward
        can judge, in up to ``bins`` bins of equal size (10 answers or more each), oldest first."""
        where, params = self._where(**filters)
        judged = f"preference != {NO_PREFERENCE} AND {{truth}} IS NOT NULL"
        where = f"{where} AND {judged}" if where else f"WHERE {judged}"
        rows = self._rows(f"SELECT created, preference = {{truth}} FROM l {where} ORDER BY id", params)
        if not rows:
            return []
        created, correct = np.array(rows, dtype=np.float64).T
        n = min(bins, max(1, len(rows) // 10))  # at least 10 answers a point, so a point is a rate
        return [(float(t[-1]), float(c.mean()), len(c))
                for t, c in zip(np.array_split(created, n), np.array_split(correct, n))]

    def frame_png(self, frame_hash: str) -> Optional[bytes]:
        """The stored frame of a hash as PNG bytes, or None."""
        if not _HASH.fullmatch(frame_hash):
            return None
        row = self._db.execute("SELECT frame FROM frames WHERE hash = ?", (frame_hash,)).fetchone()
        if row is None:
            return None
        return png_bytes(decode_array(row[0]))

    def close(self) -> None:
        self._db.close()


def _when(value: float) -> str:
    return datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M:%S")


def _parse_time(text: str, name: str) -> Optional[float]:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError as error:
        raise ValueError(f"{name} must be a date and time like 2026-12-01T09:30, got {text!r}") from error


def accuracy_svg(points: List[Tuple[float, float, int]], width: int = 640, height: int = 160) -> str:
    """An inline SVG line of label accuracy (0-1) over answers in time order."""
    if not points:
        return "<p class='muted'>no answer the true reward can judge (the env gave no rewards, or all tied)</p>"
    pad, n = 30, len(points)
    x = [pad + (width - 2 * pad) * (i / max(n - 1, 1)) for i in range(n)]
    y = [height - pad - (height - 2 * pad) * acc for _, acc, _ in points]
    line = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(x, y))
    grid = "".join(
        f"<line x1='{pad}' x2='{width - pad}' y1='{height - pad - (height - 2 * pad) * v}' "
        f"y2='{height - pad - (height - 2 * pad) * v}' stroke='#ddd'/><text x='2' y='{height - pad - (height - 2 * pad) * v + 4}' "
        f"font-size='10'>{v:.1f}</text>" for v in (0.0, 0.5, 1.0))
    judged = sum(count for *_, count in points)
    return (f"<svg id='accuracy-plot' width='{width}' height='{height}' role='img' aria-label='label accuracy over "
            f"time'>{grid}<polyline fill='none' stroke='#1565c0' stroke-width='2' points='{line}'/>"
            f"<text x='{pad}' y='{height - 8}' font-size='10'>{judged} answers judged by the true reward, oldest to "
            f"newest, in {n} bins; last bin {points[-1][1]:.2f}</text></svg>")


def render_page(reader: StoreReader, show: str = "all", labeler: str = "", since: str = "", until: str = "",
                page_number: int = 1) -> str:
    """The browser's HTML for one page of answers under the given filters."""
    filters = dict(labeler=labeler, since=_parse_time(since, "since"), until=_parse_time(until, "until"))
    shown = reader.count(show=show, **filters)
    pages = max(1, -(-shown // PAGE_SIZE))
    page_number = min(max(1, page_number), pages)
    rows = reader.page((page_number - 1) * PAGE_SIZE, show=show, **filters)
    cards = "".join(
        pair_card(f"frames/{row['hash_a']}.png", f"frames/{row['hash_b']}.png", row["preference"], row["truth"], [
            ("#", str(row["id"])), ("labeler", row["labeler_id"]), ("at", _when(row["created"])),
            ("latency", f"{row['latency_s']:.2f} s"),
            *([("true rewards", f"{row['gt_reward_a']:.3f} / {row['gt_reward_b']:.3f}")]
              if row["gt_reward_a"] is not None and row["gt_reward_b"] is not None else []),
            *([("P(image 2 better)", f"{row['soft']:.2f}")] if row["soft"] is not None else []),
            ("goal", row["goal"]),
        ], row["raw"], lazy=True)
        for row in rows)
    per_labeler = reader.labelers()
    labelers = "".join(
        f"<tr><td>{html.escape(r['labeler_id'])}</td><td>{r['answers']}</td><td>{r['abstained']}</td><td>{r['judged']}</td>"
        f"<td>{'n/a' if r['label_accuracy'] is None else format(r['label_accuracy'], '.3f')}</td></tr>"
        for r in per_labeler)
    options = "".join(f"<option{' selected' if s == show else ''}>{s}</option>" for s in SHOWS)
    names = "".join(f"<option value='{html.escape(r['labeler_id'])}'{' selected' if r['labeler_id'] == labeler else ''}>"
                    f"{html.escape(r['labeler_id'])}</option>"
                    for r in per_labeler)

    def link(number: int, text: str) -> str:
        query = urlencode(dict(show=show, labeler=labeler, since=since, until=until, page=number))
        return f"<a href='?{query}' class='page-link'>{text}</a>"

    nav = (f"<p id='pages'>{link(page_number - 1, '&larr; previous') if page_number > 1 else ''} page "
           f"<b id='page-number'>{page_number}</b> of <b id='page-count'>{pages}</b> "
           f"{link(page_number + 1, 'next &rarr;') if page_number < pages else ''}</p>")
    body = f"""<h1>Label store</h1><p class='muted'>{html.escape(str(reader.path))}</p>
<p>answers: <b id='count-total'>{reader.count()}</b>; matching the filters: <b id='count-shown'>{shown}</b>;
wrong: <b id='count-wrong'>{reader.count(show='wrong', **filters)}</b>;
abstained: <b id='count-abstained'>{reader.count(show='abstained', **filters)}</b></p>
<table id='labelers'><tr><th>labeler</th><th>answers</th><th>abstained</th><th>judged by the true reward</th>
<th>label accuracy</th></tr>{labelers}</table>
<form id='filters' method='get'><p>show <select name='show'>{options}</select>
labeler <select name='labeler'><option value=''>all</option>{names}</select>
from <input type='datetime-local' name='since' value='{html.escape(since)}'>
to <input type='datetime-local' name='until' value='{html.escape(until)}'> <button>apply</button></p></form>
<h2>Label accuracy over time</h2>{accuracy_svg(reader.accuracy_over_time(**filters))}
<h2>Pairs, as the labeler saw them</h2>{nav}{cards}{nav}"""
    return page("Label store", body)


def make_inspect_app(path: Union[str, Path], token: Optional[str] = None) -> Any:
    """The label browser of the store at ``path`` as a FastAPI app (requests must carry ``token`` if given)."""
    require_web()
    from fastapi import FastAPI, HTTPException, Query
    from fastapi.responses import HTMLResponse, Response

    reader = StoreReader(path)
    app = FastAPI(title="vlm-reward inspect", docs_url=None, redoc_url=None, openapi_url=None)
    add_guards(app, token)

    @app.get("/", response_class=HTMLResponse)
    def index(show: str = "all", labeler: str = "", since: str = "", until: str = "",
              page: int = Query(1, ge=1)) -> str:
        try:
            return render_page(reader, show, labeler, since, until, page)
        except ValueError as error:
            raise HTTPException(400, str(error)) from error

    @app.get("/frames/{frame_hash}.png")
    def frame(frame_hash: str) -> Response:
        png = reader.frame_png(frame_hash)
        if png is None:
            raise HTTPException(404, "no such frame")
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=86400"})

    return app


def serve_inspect(path: Union[str, Path], host: str = "127.0.0.1", port: int = 0,
                  token: Optional[str] = None) -> BackgroundServer:
    """Serve the label browser of the store at ``path``; open the returned server's ``url``.

    :param host: loopback by default; any other address needs the access token (a random one unless
        ``token`` is given), which ``url`` carries.
    :param port: 0 picks a free port.
    """
    token = access_token(host, token)
    return BackgroundServer(make_inspect_app(path, token), host, port, token)
