"""Text from untrusted files, made safe to print: control characters and odd Unicode escaped.

A layer name in a ``.mbits`` file is any string its writer chose. Printed raw, ``\\x1b[2J``
clears the reader's terminal, ``\\x1b]0;...\\x07`` retitles it, a bidi override (U+202E)
reorders what follows, and a lone surrogate cannot even be encoded as UTF-8. :func:`printable`
escapes every such character as Python does in a ``repr`` (``\\x1b``, ``\\u202e``, ``\\ud800``)
and leaves everything else, letters of any script included, as it is.
"""

from __future__ import annotations

import unicodedata

__all__ = ["printable"]

# Unicode categories that are never shown as a glyph: controls, format characters (bidi overrides,
# zero-width joiners), surrogates, private use, unassigned, and line/paragraph separators.
_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str, *, keep: str = "") -> str:
    """``text`` with every control, format, surrogate, private-use, unassigned or separator character escaped.

    Args:
        text: any string (from a file, an error message).
        keep: characters to leave as they are (``"\\n"`` for multi-line messages).

    Returns:
        the same string where nothing needed escaping (the common case: no copy is made).
    """
    if text.isascii() and text.isprintable():
        return text
    return "".join(_escape(ch) if ch not in keep and unicodedata.category(ch) in _HIDDEN else ch for ch in text)
