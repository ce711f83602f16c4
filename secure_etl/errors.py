"""The base of errors a user can cause and fix; the CLI prints them as one line."""

import unicodedata

# Control (NUL, newline, ESC...), format (bidi overrides) and line/paragraph separators.
_UNPRINTABLE = {"Cc", "Cf", "Zl", "Zp"}


class UserError(Exception):
    """Bad input (a config, a file, a flag): the message says what, where and what to do."""


def escape_controls(text: str) -> str:
    """``text`` with every control or format character written as an escape (``\\x1b``,
    ``\\n``, ``\\u202e``), so that input echoed in an error cannot move the cursor, change
    colours or forge another line on the terminal."""
    if text.isprintable():
        return text
    return "".join(
        c.encode("unicode_escape").decode("ascii") if unicodedata.category(c) in _UNPRINTABLE else c
        for c in text
    )
