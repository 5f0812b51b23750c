"""Text from outside (file names, header values) made safe where it is shown or written.

A file name can hold any byte but '/' and NUL: escape sequences that retitle the terminal or
clear the screen, bidi overrides that reorder what is shown, bytes that are not UTF-8 (Python
keeps them as lone surrogates, which cannot be printed at all). FITS header cards hold printable
ASCII only. Both get the same readable escapes as Python's repr (\\x1b, \\u2603, \\udcff for a
raw byte); report.json keeps the real name.
"""

from __future__ import annotations

import unicodedata

# Unicode format characters that change the order or look of the text around them.
_BIDI = {0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}


def _escape(ch: str) -> str:
    o = ord(ch)
    if 0xDC80 <= o <= 0xDCFF:  # an undecodable byte kept by surrogateescape
        return f"\\x{o - 0xDC00:02x}"
    if o < 0x100:
        return f"\\x{o:02x}"
    return f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"


def _unsafe_for_terminal(ch: str) -> bool:
    o = ord(ch)
    if o < 0x20 or 0x7F <= o < 0xA0 or o in _BIDI:
        return True
    cat = unicodedata.category(ch)
    return cat in ("Cs", "Co", "Cn") or (cat == "Zl" or cat == "Zp")


def terminal(text) -> str:
    """`text` with every control, bidi, surrogate or unassigned character escaped; other
    non-ASCII (é, ☃) is kept: terminals show it. A backslash stays as it is."""
    text = str(text)
    if text.isascii() and text.isprintable():
        return text
    return "".join(_escape(ch) if _unsafe_for_terminal(ch) else ch for ch in text)


def header(text) -> str:
    """`text` as a FITS header value: printable ASCII, everything else escaped."""
    text = str(text)
    if text.isascii() and text.isprintable():
        return text
    return "".join(ch if " " <= ch <= "~" else _escape(ch) for ch in text)


def is_header_safe(text: str) -> bool:
    return all(" " <= ch <= "~" for ch in text)


def markup(text) -> str:
    """terminal(text) for a place that reads rich / Textual markup: a name holding '[b]' or
    '[/]' is shown as it is, not taken as a style (or a markup error)."""
    from rich.markup import escape

    return escape(terminal(text))


def short_name(name: str, width: int, suffix: bool = False) -> str:
    """A frame's file name for a narrow column: terminal-safe, without its FITS suffix (unless
    `suffix`), and cut in the middle where still too long, so the frame number at the end stays
    readable. The cut is made on the escaped text (an escaped byte is 4 characters wide)."""
    from tui_stack.core.io import FITS_SUFFIXES

    ends = sorted(FITS_SUFFIXES, key=len, reverse=True)  # .fits.gz before .fits
    stem = name if suffix else next(
        (name[: -len(x)] for x in ends if name.lower().endswith(x) and len(name) > len(x)), name)
    stem = terminal(stem)
    if len(stem) > width:
        head = (width - 1) // 3
        stem = stem[:head] + "…" + stem[-(width - head - 1):]
    return stem


def markup_name(name: str, width: int, suffix: bool = False) -> str:
    """short_name for a place that reads rich / Textual markup (a table cell)."""
    from rich.markup import escape

    return escape(short_name(name, width, suffix))
