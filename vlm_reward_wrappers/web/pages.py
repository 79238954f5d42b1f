"""Page pieces shared by the audit report, the label browser and the labelling page: one look, one way
to show a pair as the labeler saw it."""

from __future__ import annotations

import html
from typing import Optional, Sequence, Tuple

from vlm_reward_wrappers.label_store import FIRST, NO_PREFERENCE, SECOND

#: How answers read on every page.
ANSWER_NAMES = {FIRST: "image 1", SECOND: "image 2", NO_PREFERENCE: "no preference", None: "dropped"}

STYLE = """
body{font-family:sans-serif;margin:2em;color:#222} table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
.pair{display:inline-block;max-width:97%;margin:8px;vertical-align:top;border:1px solid #ddd;padding:6px}
.pair img{max-width:48vw;margin-right:4px;image-rendering:pixelated;cursor:zoom-in}
.pair img.full{max-width:none;cursor:zoom-out} .wrong{background:#fee} .abstained{background:#f4f4f4}
pre{white-space:pre-wrap;font-size:11px} .muted{color:#777;font-size:12px}
"""


#: A click on a frame shows it whole, however wide (and a second click fits it again).
_ZOOM = " onclick=\"this.classList.toggle('full')\""


def page(title: str, body: str, head: str = "") -> str:
    """A whole HTML page in the shared style."""
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style>{head}</head><body>{body}</body></html>")


def verdict_class(answer: Optional[int], truth: Optional[int]) -> str:
    """"wrong" where the true reward contradicts the answer, "abstained" for no preference, else ""."""
    if answer == NO_PREFERENCE:
        return "abstained"
    if answer in (FIRST, SECOND) and truth in (FIRST, SECOND) and answer != truth:
        return "wrong"
    return ""


def pair_card(
    src_a: str,
    src_b: str,
    answer: Optional[int],
    truth: Optional[int],
    facts: Sequence[Tuple[str, str]] = (),
    raw: str = "",
    lazy: bool = False,
) -> str:
    """One pair as the labeler saw it: both frames at the size it was sent them (up to half the window's
    width each; a click shows a larger one whole), its answer, the true answer and ``facts`` ((name,
    value) pairs), and the labeler's raw text (its analysis and answer).

    :param src_a: URL (or data URI) of image 1.
    :param truth: the true reward's preference; None where unknown.
    :param lazy: load the frames only once scrolled to (large pages).
    """
    loading = ' loading="lazy"' if lazy else ""
    true_name = "unknown" if truth is None else ANSWER_NAMES[truth]
    details = "".join(f"; {html.escape(name)} {html.escape(value)}" for name, value in facts)
    text = f"<details><summary>labeler's text</summary><pre>{html.escape(raw)}</pre></details>" if raw else ""
    return (f"<div class='pair {verdict_class(answer, truth)}'>"
            f"<img src='{html.escape(src_a)}' alt='image 1'{loading}{_ZOOM}><img src='{html.escape(src_b)}' alt='image 2'{loading}{_ZOOM}>"
            f"<p>answer: <b class='answer'>{ANSWER_NAMES[answer]}</b>; true: <b class='truth'>{true_name}</b>"
            f"<span class='muted'>{details}</span></p>{text}</div>")
