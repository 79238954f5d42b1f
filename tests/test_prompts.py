import base64
import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vlm_reward_wrappers import labelers
from vlm_reward_wrappers.labelers import FIRST, NO_PREFERENCE, SECOND
from vlm_reward_wrappers.labelers.backends import frame_to_data_uri
from vlm_reward_wrappers.labelers.prompts import (
    SINGLE_STAGE_VERSION,
    TWO_STAGE_VERSION,
    analysis_prompt,
    answer_prompt,
    image_messages,
    parse_preference,
    prompt_version,
    single_stage_prompt,
)

GOAL = "to balance the brown pole on the black cart to be upright"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0", FIRST),
        ("1", SECOND),
        ("-1", NO_PREFERENCE),
        ("0.", FIRST),
        (" 1\n", SECOND),
        ("-1.", NO_PREFERENCE),
        ("**1**", SECOND),
        ("Answer: 0", FIRST),
        ("Output: -1", NO_PREFERENCE),
        ("The answer is 1.", SECOND),
        ("My answer is: 0", FIRST),
        ("Image 1", FIRST),
        ("image 2", SECOND),
        ("Image 2.", SECOND),
        ("Image 2 is better than image 1.", SECOND),
        ("Compared to image 1, image 2 is closer to the goal.", SECOND),
        ("The goal is better achieved in Image 1.", FIRST),
        ("The first image.", FIRST),
        ("1 (image 2 is closer to upright)", SECOND),
        ("0 - the pole in image 1 is upright", FIRST),
        ("There is no difference.", NO_PREFERENCE),
        ("no difference", NO_PREFERENCE),
        ("I am not sure.", NO_PREFERENCE),
        ("Both images look the same.", NO_PREFERENCE),
        ("The pole in image 1 is tilted; in image 2 it is upright.\n1", SECOND),
        ("0.5", NO_PREFERENCE),
        ("10", NO_PREFERENCE),
        ("2", NO_PREFERENCE),
        ("", NO_PREFERENCE),
        ("   \n ", NO_PREFERENCE),
        ("ddddddddɷdɆ", NO_PREFERENCE),
        ("_=ϨϨ", NO_PREFERENCE),
        ("Image 1 and image 2", NO_PREFERENCE),
        ("answer 0, answer 1", NO_PREFERENCE),
    ],
)
def test_parse_preference_reads_answers_and_never_raises(text, expected):
    assert parse_preference(text) == expected


@pytest.mark.parametrize("junk", [None, 3, b"1", "\x00\x01", "1" * 10_000, "Image " * 5000])
def test_parse_preference_garbage_is_no_preference(junk):
    assert parse_preference(junk) == NO_PREFERENCE


def test_prompts_follow_rl_vlm_f():
    analysis = analysis_prompt(GOAL)
    assert "What is shown in Image 1?" in analysis and "What is shown in Image 2?" in analysis
    assert f"The goal is {GOAL}." in analysis
    answer = answer_prompt(GOAL, "  The pole is upright in image 2.  ")
    assert answer.index("What is shown in Image 1?") < answer.index("The pole is upright in image 2.")
    for prompt in (answer, single_stage_prompt(GOAL + ".")):
        assert "Reply a single line of 0" in prompt and "Reply -1" in prompt
    assert f"The goal is {GOAL}." in single_stage_prompt(GOAL + ".")
    assert "Reply -1 if the text is unsure" in answer and "Reply -1 if you are unsure" in single_stage_prompt(GOAL)
    assert "The goal is: the pole is upright." in analysis_prompt("the pole is upright")
    assert prompt_version(True) == TWO_STAGE_VERSION != prompt_version(False) == SINGLE_STAGE_VERSION


def _rendered(messages):
    """Each message's parts as a flat list: text as is, images as "<url>"."""
    out = []
    for message in messages:
        for part in message["content"]:
            out.append(part["text"] if part["type"] == "text" else f"<{part['image_url']['url']}>")
    return out


def test_interleaved_layout_puts_each_caption_right_before_its_image():
    parts = _rendered(image_messages(["A", "B"], "question?"))
    assert parts.index("<A>") == parts.index("Image 1:\n") + 1
    assert parts.index("<B>") == parts.index("Image 2:\n") + 1
    assert parts[-1] == "question?"


def test_captioned_layout_puts_each_caption_right_after_its_image():
    messages = image_messages(["A", "B"], "question?", layout="captioned")
    assert len(messages) == 2 and all(m["role"] == "user" for m in messages)
    assert _rendered(messages[:1]) == ["<A>", "This is Image 1."]
    assert _rendered(messages[1:]) == ["<B>", "This is Image 2.\nquestion?"]
    with pytest.raises(ValueError, match="layout"):
        image_messages(["A"], "q", layout="sideways")


def _decode(uri):
    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


def test_frame_to_data_uri_is_lossless_png_shrinks_on_request_and_never_enlarges():
    frame = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    np.testing.assert_array_equal(_decode(frame_to_data_uri(frame)), frame)
    np.testing.assert_array_equal(_decode(frame_to_data_uri(frame, query_image_size=120)), frame)  # 40 x 60 kept
    assert _decode(frame_to_data_uri(frame, query_image_size=30)).shape == (20, 30, 3)


def test_importing_the_package_loads_no_optional_backend():
    code = (
        "import sys, vlm_reward_wrappers, vlm_reward_wrappers.labelers as labelers\n"
        "assert labelers.OpenAICompatibleLabeler.__name__ == 'OpenAICompatibleLabeler'\n"
        "assert labelers.LlamaCppLabeler.__name__ == 'LlamaCppLabeler'\n"
        "assert labelers.LlamaCppBackend.__name__ == 'LlamaCppBackend'\n"
        "assert vlm_reward_wrappers.CLIPRewardWrapper.__name__ == 'CLIPRewardWrapper'\n"
        "assert vlm_reward_wrappers.LlamaCppLabeler is labelers.LlamaCppLabeler\n"
        "heavy = [m for m in ('llama_cpp', 'open_clip', 'torchvision') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "SDL_VIDEODRIVER": "dummy"})
    with pytest.raises(AttributeError):
        labelers.NoSuchLabeler
