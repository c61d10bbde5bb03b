"""What a prompt may be: the one check that `pictor generate`, `pictor reproduce` and the
server's POST /v1/generations apply before anything else runs.

A prompt is written into every image's provenance record (JSON in an iTXt chunk, and the XMP
description), shown in the web page and tokenized; so beyond a length cap (a 30 MB prompt took
`reproduce` 83 s and 2.8 GB), it may not hold

- NUL or other control characters (only tab, newline and carriage return are text): they make
  labels unreadable and smuggle terminal escapes into logs;
- lone surrogates (U+D800-U+DFFF unpaired): they cannot be encoded as UTF-8 at all, so the PNG
  could not be written.

`prompt_problem` says what is wrong (None: nothing); `check_prompt` raises it as a ValueError,
which the CLI turns into exit 2 and the server into 422.
"""

from __future__ import annotations

import unicodedata

# Longest prompt (characters) anything accepts; the server's own limit (max_prompt_chars) is
# lower. The text encoders read at most a few hundred tokens.
MAX_PROMPT_CHARS = 2000
_TEXT_CONTROLS = "\t\n\r"


def prompt_problem(text: object, name: str = "prompt",
                   max_chars: int = MAX_PROMPT_CHARS) -> str | None:
    """Why `text` is not an acceptable prompt, or None."""
    if not isinstance(text, str):
        return f"{name} must be a string, got {type(text).__name__}"
    if len(text) > max_chars:
        return f"{name} has {len(text)} characters; the limit is {max_chars}"
    for position, ch in enumerate(text):
        category = unicodedata.category(ch)
        if category == "Cc" and ch not in _TEXT_CONTROLS:
            what = "NUL" if ch == "\x00" else "a control character"
            return f"{name} holds {what} (U+{ord(ch):04X}) at position {position}; remove it"
        if category == "Cs":
            return (f"{name} holds a lone surrogate (U+{ord(ch):04X}) at position {position}, "
                    "which is not text; send valid UTF-8")
    return None


def check_prompt(text: object, name: str = "prompt", max_chars: int = MAX_PROMPT_CHARS) -> None:
    """ValueError with the reason unless `text` is an acceptable prompt."""
    problem = prompt_problem(text, name, max_chars)
    if problem is not None:
        raise ValueError(problem)
