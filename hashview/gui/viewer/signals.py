"""``emit(signal, *args)``: emit a Qt signal from Python without PySide6 6.12's refcount bug.

PySide6 6.12.0 ``SignalInstance.emit()`` returns ``True`` without taking a reference. On Python
3.12+ ``True`` is immortal and nothing happens; on Python 3.11 every emit drops one reference to
``True`` for good, and after a few thousand emits (a minute of panning) the interpreter aborts
with "Fatal Python error: bool_dealloc". A probe at import time measures the leak, and ``emit``
gives the reference back only when the installed PySide6 really leaks it.
"""

from __future__ import annotations

import ctypes
import sys

from PySide6.QtCore import QObject, Signal

_incref = ctypes.pythonapi.Py_IncRef
_incref.argtypes = [ctypes.py_object]
_incref.restype = None


class _Probe(QObject):
    ping = Signal()


def _measure_leak(emits: int = 8) -> bool:
    if sys.version_info >= (3, 12):
        return False  # immortal True: the missing reference is harmless
    probe = _Probe()
    before = sys.getrefcount(True)
    for _ in range(emits):
        probe.ping.emit()
    leaked = before - sys.getrefcount(True)
    for _ in range(max(0, leaked)):  # give back what the probe itself took
        _incref(True)
    return leaked == emits


EMIT_LEAKS_TRUE = _measure_leak()


def emit(signal, *args) -> None:
    """``signal.emit(*args)``, compensating the missing reference when PySide6 has the bug."""
    result = signal.emit(*args)
    if EMIT_LEAKS_TRUE and result is True:
        _incref(True)
