"""User-facing errors.

Every error that reaches a person is a :class:`HashViewError` whose ``str()`` is one line naming
the file and the reason, e.g. ``slide.svs: not a slide or image (unrecognised format)``. The CLI
prints that line without a traceback; the app shows it in a message box; batches record it and go
on with the next file.
"""

from __future__ import annotations

from pathlib import Path


def printable(text: object) -> str:
    """``text`` safe to show on a terminal or in a one-line message: characters that are not
    printable (control characters such as ESC or newline, bidirectional overrides) become
    escapes like ``\\x1b``, and bytes of a file name that were not UTF-8 show as ``\\xe9``;
    so a name taken from a file cannot move the cursor, recolour the terminal, break a message
    in two or fail to print."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(char: str) -> str:
    if "\udc80" <= char <= "\udcff":  # an undecodable byte, as os.fsdecode keeps it
        return f"\\x{ord(char) - 0xDC00:02x}"
    return char.encode("unicode_escape").decode("ascii")


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
