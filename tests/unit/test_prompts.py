"""The one prompt check of CLI, server and reproduce."""

from __future__ import annotations

import pytest

from pictor.prompts import MAX_PROMPT_CHARS, check_prompt, prompt_problem


def test_ordinary_prompts_pass():
    for text in ("", "a red circle", "deux étoiles\tà gauche\r\n", "🙂 " * 10,
                 "x" * MAX_PROMPT_CHARS, "a\u200bzero-width and bidi\u202e marks"):
        assert prompt_problem(text) is None


@pytest.mark.parametrize("text, problem", [
    ("x" * (MAX_PROMPT_CHARS + 1), f"prompt has {MAX_PROMPT_CHARS + 1} characters"),
    ("a\x00b", "prompt holds NUL (U+0000) at position 1"),
    ("\x1b]0;title\x07", "prompt holds a control character (U+001B) at position 0"),
    ("a\x7f", "U+007F"),
    ("a\x9b31m", "U+009B"),
    ("a \ud83d b", "lone surrogate (U+D83D) at position 2"),
    (b"bytes", "prompt must be a string, got bytes"),
])
def test_hostile_prompts_fail_with_the_reason(text, problem):
    assert problem in prompt_problem(text)
    with pytest.raises(ValueError, match="prompt"):
        check_prompt(text)
    assert prompt_problem(text, "negative prompt").startswith("negative prompt")
