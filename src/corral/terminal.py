"""Text from servers and input files, made safe to print on a terminal.

Answers and error texts are data, and data may hold escape sequences: ``ESC ] 0 ; title BEL`` sets
the window title, ``ESC [ 2 J`` clears the screen, others rewrite what was printed before or make a
line lie about what it says (bidirectional overrides). Printed raw, a model's answer could do any of
that to the person reading it. `visible` shows every such character as an escape a reader can see
(``\\x1b``, ``\\u202e``) and keeps the text otherwise as it is.
"""

from __future__ import annotations

import re

__all__ = ["visible"]

# C0 controls but tab and newline, DEL, C1 controls, and the bidirectional formatting characters.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_UNSAFE_ONE_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: object, *, one_line: bool = False) -> str:
    """``text`` with control and direction characters shown as ``\\xNN`` / ``\\uNNNN``;
    ``one_line`` escapes newlines and tabs too (a list of one line per item)."""
    value = str(text)
    return (_UNSAFE_ONE_LINE if one_line else _UNSAFE).sub(_escape, value)
