"""RG-VLM's window prompts and the robust reading of per-transition scores."""

import numpy as np
import pytest

from vlm_reward_wrappers.labelers.prompts import (
    SCORE_SINGLE_STAGE_VERSION,
    SCORE_TWO_STAGE_VERSION,
    describe_actions,
    parse_scores,
    progress_prompt,
    score_prompt,
    score_prompt_version,
    single_stage_score_prompt,
)

GOAL = "to balance the brown pole on the black cart to be upright"
NAN = float("nan")


@pytest.mark.parametrize(
    "text, n, expected",
    [
        ("Action 1: 7\nAction 2: 3", 2, [7, 3]),
        ("**Action 1**: 7/10\n**Action 2**: 10/10", 2, [7, 10]),
        ("Action 1: 7, Action 2: 3.5", 2, [7, 3.5]),
        ("Transition 1 - 4\nStep 2 = 6", 2, [4, 6]),
        ("Action 1 is a score of 6", 1, [6]),
        ("Action 1: the cart moves left, score 3\nAction 2: pole rises (score: 9)", 2, [3, 9]),
        ("1: 4\n2: 5\n3: 6", 3, [4, 5, 6]),
        ("1. 5\n2. 6", 2, [5, 6]),
        ("[3, 5, 7]", 3, [3, 5, 7]),
        ("Scores: 3, 4", 2, [3, 4]),
        ("3\n5\n7", 3, [3, 5, 7]),
        ("0.5", 1, [0.5]),
        ("Action 1: 7 (the pole rises)\nAction 2: 0.", 2, [7, 0]),
        ("The pole tilts.\nAction 1: 2\nOn reflection:\nAction 1: 8", 1, [8]),  # the later answer counts
        ("Action 1: 11\nAction 2: 2", 2, [NAN, 2]),  # off the scale
        ("Action 1: -3\nAction 2: 4", 2, [NAN, 4]),
        ("Action 3: 4", 2, [NAN, NAN]),  # no such action
        ("Action 1: [0.523]", 1, [NAN]),  # an echoed action is no score
        ("7 8 9", 2, [NAN, NAN]),  # three numbers for two actions
        ("The score is 8", 2, [NAN, NAN]),
        ("2024-01-05", 1, [NAN]),
        ("", 2, [NAN, NAN]),
        ("ddddddddɷdɆ", 3, [NAN, NAN, NAN]),
    ],
)
def test_parse_scores_reads_answers_and_never_raises(text, n, expected):
    np.testing.assert_array_equal(parse_scores(text, n), expected)


@pytest.mark.parametrize("junk", [None, 3, b"1", "\x00\x01", "1" * 10_000, "Action " * 5000, "Action 1: " * 5000])
def test_parse_scores_garbage_is_unscored(junk):
    scores = parse_scores(junk, 4)
    assert scores.shape == (4,) and np.isnan(scores).all()


def test_window_prompts_show_every_action_and_ask_one_score_each():
    actions = np.array([[0.52341], [-1.0]], dtype=np.float32)
    question = progress_prompt(GOAL, actions, "a force on the cart, from -1 (left) to 1 (right)")
    assert f"The goal is {GOAL}." in question and "The 3 images are consecutive frames" in question
    assert "Action 1: [0.523]\nAction 2: [-1.]" in question and "An action is a force on the cart" in question
    second = score_prompt(GOAL, actions, "  The pole rises, then falls.  ")
    assert second.index("Action 2: [-1.]") < second.index("The pole rises, then falls.") < second.index("Reply exactly 2")
    single = single_stage_score_prompt("the pole is upright", [0, 1, 1])
    assert "The goal is: the pole is upright." in single and '"Action k: score"' in single
    assert describe_actions([{"push": 1}]) == "Action 1: {'push': 1}"
    assert score_prompt_version(True) == SCORE_TWO_STAGE_VERSION != score_prompt_version(False) == SCORE_SINGLE_STAGE_VERSION
