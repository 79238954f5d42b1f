"""RL-VLM-F's prompts, answer parsing and image encoding, shared by every VLM labeler.

A query shows two frames and the goal. In the two-stage query (RL-VLM-F's), stage 1 asks the VLM
to describe image 1 and image 2 and analyse them against the goal; stage 2 gives that analysis back
as text and asks for one line: 0 (image 1 better), 1 (image 2 better) or -1 (no difference). The
single-stage query asks for that line straight away: half the cost, usually less accurate.

Chat templates place a message's images differently. Most (and every OpenAI-compatible server)
keep text and image parts in order ("interleaved"); llama-cpp-python's LLaVA-1.5 family puts all
images of a message before all its text, which would separate "Image 1" from image 1. For those
the "captioned" layout sends each image in its own user message, its caption right after it.
"""

from __future__ import annotations

import base64
import io
import re
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from vlm_reward_wrappers.labelers.base import FIRST, NO_PREFERENCE, SECOND

#: Layouts of the two images and their captions in a chat request (see the module docstring).
LAYOUTS = ("interleaved", "captioned")

#: Stored with every answer; bump on any change to the wording below, so older answers are not reused.
TWO_STAGE_VERSION = "rlvlmf-two-stage-v1"
SINGLE_STAGE_VERSION = "rlvlmf-single-stage-v1"

_ANALYSIS = """1. What is shown in Image 1?
2. What is shown in Image 2?
3. {goal_sentence} Is there any difference between Image 1 and Image 2 in terms of achieving the goal?"""

_ANSWER_RULES = """Is the goal better achieved in Image 1 or Image 2?
Reply a single line of 0 if the goal is better achieved in Image 1, or 1 if it is better achieved in Image 2.
Reply -1 if {who} unsure or there is no difference."""

_SUMMARY = """Based on the text below to the questions:
{questions}
{analysis}

{rules}"""

_SINGLE = """{goal_sentence}
{rules}"""


def _goal_sentence(goal: str) -> str:
    """RL-VLM-F's goals read "to open the drawer"; a description of the goal state gets a colon."""
    goal = goal.strip().rstrip(".")
    return f"The goal is {goal}." if goal.lower().startswith("to ") else f"The goal is: {goal}."


def analysis_prompt(goal: str) -> str:
    """Stage 1: describe both images and compare them against the goal."""
    return _ANALYSIS.format(goal_sentence=_goal_sentence(goal))


def answer_prompt(goal: str, analysis: str) -> str:
    """Stage 2 (text only): the one-line answer, given the stage-1 analysis."""
    rules = _ANSWER_RULES.format(who="the text is")
    return _SUMMARY.format(questions=analysis_prompt(goal), analysis=analysis.strip(), rules=rules)


def single_stage_prompt(goal: str) -> str:
    """The one-line answer asked directly, next to the images."""
    return _SINGLE.format(goal_sentence=_goal_sentence(goal), rules=_ANSWER_RULES.format(who="you are"))


def prompt_version(two_stage: bool) -> str:
    """The ``prompt_version`` of labelers asking the two-stage or the single-stage query."""
    return TWO_STAGE_VERSION if two_stage else SINGLE_STAGE_VERSION


def image_messages(image_urls: Sequence[str], question: str, layout: str = "interleaved") -> List[Dict]:
    """OpenAI-style chat messages showing the images, each captioned "Image k", then the question.

    :param image_urls: one URL per image (``data:`` URIs from :func:`frame_to_data_uri`), in order.
    :param question: the text that follows the images.
    :param layout: "interleaved" (one message, captions before their images) or "captioned" (one
        message per image, caption right after it) for templates that put images before text.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")

    def image(url: str) -> Dict:
        return {"type": "image_url", "image_url": {"url": url}}

    def text(value: str) -> Dict:
        return {"type": "text", "text": value}

    if layout == "interleaved":
        content = [text(f"Consider the following {len(image_urls)} images:\n")]
        for k, url in enumerate(image_urls, start=1):
            content += [text(f"Image {k}:\n"), image(url), text("\n")]
        content.append(text(question))
        return [{"role": "user", "content": content}]
    messages = [{"role": "user", "content": [image(url), text(f"This is Image {k}.")]}
                for k, url in enumerate(image_urls, start=1)]
    messages[-1]["content"][-1]["text"] += "\n" + question
    return messages


def text_messages(question: str) -> List[Dict]:
    """A text-only chat request (stage 2)."""
    return [{"role": "user", "content": question}]


def frame_to_data_uri(frame: np.ndarray, image_size: Optional[int] = None) -> str:
    """A ``data:image/png;base64,...`` URI of a frame, the image format every backend accepts.

    :param frame: (H, W, 3) uint8 rgb frame.
    :param image_size: if given, the frame is resized (aspect kept) so its longer side is this many
        pixels: larger helps VLMs read small frames, smaller caps the image tokens of tiling encoders.
    """
    image = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8))
    if image_size is not None and max(image.size) != image_size:
        scale = image_size / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# ---------------------------------------------------------------------------------------- parsing
# A number that is a whole answer: not part of "10", "0.5", "1st" or "-12".
_NUMBER = r"(?<![\w.])(-1|0|1)(?![\w]|\.\d)"
_LINE_ANSWER = re.compile(rf"^{_NUMBER}\s*[.!)]?$")
_LABELLED = re.compile(rf"\b(?:answer|output|preference|choice|reply)\b\W{{0,12}}(?:is\W{{0,4}})?{_NUMBER}")
_LEADING = re.compile(rf"^{_NUMBER}(?:\s*[.:)!,-]?\s+|\s*[:)-]\s*)(?!\d)")
_IMAGE = r"(?:image|picture|frame)\s*#?\s*([12])\b"
# The words between an image and "better" may not name another image ("image 1, image 2 is better").
_GAP = r"(?:(?!image|picture|frame)[^.\n]){0,60}?"
_IMAGE_BETTER = re.compile(
    rf"{_IMAGE}{_GAP}\b(?:better|closer|preferred|achieves|achieved)\b"
    rf"|\b(?:better|closer|preferred|achieved)\b{_GAP}\b{_IMAGE}"
)
_FIRST_SECOND = re.compile(r"\b(first|second)\s+(?:image|picture|frame)\b")
_NO_DIFFERENCE = re.compile(
    r"\b(no (?:clear |significant |noticeable )?difference|not sure|unsure|cannot (?:tell|determine|be determined)"
    r"|can't (?:tell|determine)|neither|equally|the same|identical|uncertain)\b"
)
_LABELS = {"-1": NO_PREFERENCE, "0": FIRST, "1": SECOND}


def _clean_line(line: str) -> str:
    """A line without markdown emphasis, quotes, and labels like "Answer:" or "Output:"."""
    line = re.sub(r"[*_`\"'\[\]]", "", line).strip()
    return re.sub(r"^(?:final\s+)?(?:answer|output|reply|preference)\s*[:=-]\s*", "", line, flags=re.I).strip()


def parse_preference(text: str) -> int:
    """The preference a VLM's answer states: 0 (image 1), 1 (image 2) or -1 (none, or unreadable).

    Never raises. Reads, in order: a line that is only an answer ("1", "0.", "Answer: -1"), a
    labelled answer ("the answer is 1"), "Image 2 is better" and the like, "no difference" and the
    like, a leading number ("0 - image 1 is closer"), and a lone mention of one image ("Image 2").
    Anything else, including two contradicting statements, is -1 (no preference).
    """
    if not isinstance(text, str) or not text.strip():
        return NO_PREFERENCE
    lines = [_clean_line(line) for line in text.strip().splitlines()]
    # The last such line: a model that reasons first ends with its answer.
    for line in reversed(lines):
        match = _LINE_ANSWER.match(line)
        if match:
            return _LABELS[match.group(1)]
    lowered = text.lower()
    labelled = {_LABELS[m] for m in _LABELLED.findall(lowered)}
    if len(labelled) == 1:
        return labelled.pop()
    better = {int(a or b) - 1 for a, b in _IMAGE_BETTER.findall(lowered)}
    if len(better) == 1:
        return better.pop()
    if _NO_DIFFERENCE.search(lowered):
        return NO_PREFERENCE
    leading = _LEADING.match(lines[0])
    if leading:
        return _LABELS[leading.group(1)]
    mentioned = {int(k) - 1 for k in re.findall(_IMAGE, lowered)}
    mentioned |= {FIRST if word == "first" else SECOND for word in _FIRST_SECOND.findall(lowered)}
    if len(mentioned) == 1:
        return mentioned.pop()
    return NO_PREFERENCE
