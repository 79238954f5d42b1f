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

import re
from typing import Dict, List, Optional, Sequence

import numpy as np

from vlm_reward_wrappers.labelers.backends.base import LAYOUTS
from vlm_reward_wrappers.label_store import FIRST, NO_PREFERENCE, SECOND

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

    :param image_urls: one URL per image (``data:`` URIs from a backend's ``image_url``), in order.
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


def raw_text(analysis: str, answer: str) -> str:
    """What the label store keeps of a query: stage 1's analysis, if any, then the answer line."""
    return f"{analysis}\n[answer] {answer}" if analysis else answer


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


# ------------------------------------------------------------------------- RG-VLM window scores
# RG-VLM (arXiv 2504.08772) scores the transitions of a fixed dataset: the VLM sees a window of
# consecutive frames and the actions taken between them. Stage 1 asks how each action moves the task
# forward given the goal; stage 2 (text only) turns that analysis into one 0-10 score per action.

#: Stored with every window score; bump on any change to the wording below, so older scores are not reused.
SCORE_TWO_STAGE_VERSION = "rgvlm-two-stage-v1"
SCORE_SINGLE_STAGE_VERSION = "rgvlm-single-stage-v1"

#: The score scale asked for: 0 (no progress or away from the goal) to 10.
MAX_SCORE = 10

_WINDOW = """{goal_sentence}
The {n_images} images are consecutive frames of one episode, in order: between Image k and Image k+1 the agent took action k.
{action_sentence}The actions were:
{actions}"""

_PROGRESS = """{window}
For each action, describe what changes from the image before it to the image after it, and whether that moves the task forward towards the goal or away from it."""

_SCORE_RULES = """Score how much each of the {n} actions moves the task forward towards the goal, from 0 (away from the goal, or no progress) to {top} (the most progress, or the goal achieved).
Reply exactly {n} lines, one per action, in the form "Action k: score", and nothing else."""


def score_prompt_version(two_stage: bool) -> str:
    """The ``prompt_version`` of score labelers asking the two-stage or the single-stage query."""
    return SCORE_TWO_STAGE_VERSION if two_stage else SCORE_SINGLE_STAGE_VERSION


def describe_actions(actions: Sequence) -> str:
    """One line per action, "Action k: <value>", with floats rounded to 3 decimals.

    :param actions: the window's actions in order: (W, ...) array, or a sequence of per-step values.
    """

    def value(action) -> str:
        array = np.asarray(action)
        if array.dtype.kind == "f":
            return np.array2string(np.round(array, 3), separator=", ")
        return np.array2string(array, separator=", ") if array.dtype.kind in "iub" else str(action)

    return "\n".join(f"Action {k}: {value(action)}" for k, action in enumerate(actions, start=1))


def _window(goal: str, actions: Sequence, action_description: Optional[str]) -> str:
    sentence = f"An action is {action_description.strip().rstrip('.')}.\n" if action_description else ""
    return _WINDOW.format(goal_sentence=_goal_sentence(goal), n_images=len(actions) + 1,
                          action_sentence=sentence, actions=describe_actions(actions))


def progress_prompt(goal: str, actions: Sequence, action_description: Optional[str] = None) -> str:
    """Stage 1: how each action of the window moves the task forward, shown with its frames.

    :param actions: the W actions taken between the W + 1 frames shown.
    :param action_description: what an action means, e.g. "a horizontal force on the cart, from -1
        (push left) to 1 (push right)"; VLMs read raw numbers poorly without it.
    """
    return _PROGRESS.format(window=_window(goal, actions, action_description))


def score_prompt(goal: str, actions: Sequence, analysis: str, action_description: Optional[str] = None) -> str:
    """Stage 2 (text only): one 0-10 score per action, given the stage-1 analysis."""
    rules = _SCORE_RULES.format(n=len(actions), top=MAX_SCORE)
    return _SUMMARY.format(questions=progress_prompt(goal, actions, action_description), analysis=analysis.strip(),
                           rules=rules)


def single_stage_score_prompt(goal: str, actions: Sequence, action_description: Optional[str] = None) -> str:
    """The scores asked directly, next to the frames."""
    return f"{_window(goal, actions, action_description)}\n{_SCORE_RULES.format(n=len(actions), top=MAX_SCORE)}"


# A score: a whole or decimal number, optionally "/10", not followed by more digits.
_SCORE = r"(\d{1,3}(?:\.\d+)?)(?:\s*/\s*10(?![\d.]))?(?!\d|\.\d)"
_ACTION_SCORE = re.compile(
    rf"\b(?:action|transition|step)\s*#?\s*(\d{{1,4}})\s*(?:[:=)\]\-\u2013]|\bis\b)\s*"
    rf"(?:(?:a\s+)?(?:score|rating)\s*(?:of\b|[:=])?\s*)?{_SCORE}",
    re.I,
)
_ACTION_LINE = re.compile(r"^\W*(?:action|transition|step)\s*#?\s*(\d{1,4})\b(.*)$", re.I)
_NAMED_SCORE = re.compile(rf"\b(?:score|rating)\b\W{{0,4}}(?:(?:is|of)\s+)?{_SCORE}", re.I)
_BARE_LINE = re.compile(rf"^\s*#?(\d{{1,4}})\s*(?:[:=)\-\u2013]|\.\s)\s*{_SCORE}(?:\s*$|[\s,;(])")
_SCORES_LABEL = re.compile(r"^(?:final\s+)?(?:answer|output|reply|scores?|ratings?)\s*[:=]\s*", re.I)
_NUMBER_LIST = re.compile(rf"^[\[(]?\s*{_SCORE}(?:\s*[,;\s]\s*{_SCORE})*\s*[\])]?\.?$")


def _in_range(value: str) -> float:
    score = float(value)
    return score if 0.0 <= score <= MAX_SCORE else float("nan")


def parse_scores(text: str, n: int) -> np.ndarray:
    """The 0-10 score of each of ``n`` actions that a VLM's answer states; NaN where it states none.

    Never raises. Reads, in order of trust: "Action k: s" (also "Transition k", "Step k", "s/10",
    "score of s", several on one line), lines "Action k ... score s", bare lines "k: s", and, when
    nothing is numbered, exactly ``n`` numbers as lines or one list ("[3, 5, 7]"). A number outside
    0-10, an action number outside 1..n, and anything else leave that action NaN; where one action
    is scored twice the later score counts (a model that reasons first ends with its answer).

    :return: (n,) float64 scores in [0, 10] or NaN.
    """
    scores = np.full(n, np.nan)
    if not isinstance(text, str) or not text.strip():
        return scores
    lines = [_SCORES_LABEL.sub("", re.sub(r"[*_`\"']", "", line).strip()) for line in text.strip().splitlines()]
    numbered = []
    for line in lines:
        found = [(int(k), value) for k, value in _ACTION_SCORE.findall(line)]
        if not found:
            labelled, bare = _ACTION_LINE.match(line), _BARE_LINE.match(line)
            named = _NAMED_SCORE.search(labelled.group(2)) if labelled else None
            if named:
                found = [(int(labelled.group(1)), named.group(1))]
            elif bare:
                found = [(int(bare.group(1)), bare.group(2))]
        numbered += found
    if numbered:
        for k, value in numbered:
            if 1 <= k <= len(scores):
                scores[k - 1] = _in_range(value)
        return scores
    # Nothing numbered: one score per action, as one list or as lines of one number each.
    lists = [re.findall(_SCORE, line) for line in lines if _NUMBER_LIST.match(line)]
    whole = [values for values in lists if len(values) == len(scores)]
    if whole:
        values = whole[-1]
    elif all(len(values) == 1 for values in lists):
        values = [values[0] for values in lists]
    else:
        return scores
    if len(values) == len(scores):
        scores[:] = [_in_range(value) for value in values]
    return scores
