"""Text shown to the user or drawn in a figure, made printable first.

A path the operating system hands over with bytes its encoding cannot decode (a Latin-1
file name under a UTF-8 or ASCII locale, any non-ASCII name under ``LC_ALL=C`` without
Python's UTF-8 mode) arrives as a ``str`` holding lone surrogates (PEP 383). Such a string
cannot be encoded, drawn by matplotlib or printed to a strict stream. :func:`printable`
shows each such byte as ``\\xNN``, as ``ls -b`` does, and other unprintable characters
(control characters) as Python escapes; printable text, non-ASCII letters included, is kept.
"""

from __future__ import annotations


def printable(text: object) -> str:
    """``str(text)`` with undecodable bytes as ``\\xNN`` and control characters escaped.

    Args:
        text: a path, class name, dataset or strategy spec, message, ... (anything ``str`` takes).

    Returns:
        A string every UTF-8 encoder, terminal and matplotlib font renderer accepts.
    """
    s = str(text)
    if s.isprintable():
        return s
    out = []
    for ch in s:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # a byte the file system encoding could not decode
            out.append(f"\\x{code - 0xDC00:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        elif ch == " " or ch.isprintable():
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)
