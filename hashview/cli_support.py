"""What every ``hashview`` sub-command shares: exit codes and the progress bar."""

from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3


def progress_bar(enabled: bool):
    """A stderr progress bar (drawn only on a terminal; ``enabled=False`` for ``--json``)."""
    from hashview.progress import StderrBar

    return StderrBar(enabled=enabled)
