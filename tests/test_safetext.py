"""printable: what a terminal would act on is escaped, every script's letters stay."""

from __future__ import annotations

import pytest

from mixbits.safetext import printable


@pytest.mark.parametrize("text, shown", [
    ("features.0", "features.0"),
    ("\x1b[2J\x1b]0;PWNED\x07", "\\x1b[2J\\x1b]0;PWNED\\x07"),
    ("a\ud800b", "a\\ud800b"),  # a lone surrogate: no UTF-8 for it
    ("x\u202ey\u2066z\u200b", "x\\u202ey\\u2066z\\u200b"),  # bidi override, isolate, zero-width space
    ("line\u2028sep\x85", "line\\u2028sep\\x85"),
    ("tab\tnew\nline", "tab\\x09new\\x0aline"),
    ("日本語 é 😀", "日本語 é 😀"),
    ("\U000e0001", "\\U000e0001"),  # a tag character (format)
])
def test_printable(text, shown):
    assert printable(text) == shown
    assert printable(shown) == shown  # escaping twice changes nothing more


def test_keep():
    assert printable("a\nb\x1b", keep="\n") == "a\nb\\x1b"
