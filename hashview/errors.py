"""User-facing errors.

Every error that reaches a person is a :class:`HashViewError` whose ``str()`` is one line naming
the file and the reason, e.g. ``slide.svs: not a slide or image (unrecognised format)``. The CLI
prints that line without a traceback; the app shows it in a message box; batches record it and go
on with the next file.
"""

from __future__ import annotations

from pathlib import Path

_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """``text`` made safe to show as (part of) one line on a terminal, in a log or a dialog.

    Names come from files and libraries that anyone may have made: an escape sequence in a file
    name could recolour or rewrite the terminal, a newline could fake a line of output. Every
    character that is not printable (controls, line and paragraph separators, invisible
    formatting such as bidirectional overrides) becomes a visible escape: ``\\x1b``, ``\\n``,
    ``\\u202e``. Bytes of a file name that were not UTF-8 (lone surrogates) show as ``\\xNN``.
    """
    text = str(text)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escaped(ch) for ch in text)


def _escaped(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that os.fsdecode could not decode
        return f"\\x{code - 0xDC00:02x}"
    if ch in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[ch]
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


class HashViewError(Exception):
    """Base class: a problem with the user's input, explained in one line."""

    def __init__(self, path: str | Path | None, reason: str):
        self.path = None if path is None else str(path)
        # Reasons may quote names from files; the message stays one printable line.
        first = reason.strip().splitlines()[0] if reason.strip() else "unknown error"
        self.reason = printable(first)
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return f"{printable(self.path)}: {self.reason}" if self.path else self.reason


class SourceError(HashViewError):
    """A slide, image or patch folder that cannot be opened or read."""


class LibraryError(HashViewError):
    """A library file that is missing, not a library, or made by another model."""


class ModelError(HashViewError):
    """A model name or model file that cannot be loaded."""
