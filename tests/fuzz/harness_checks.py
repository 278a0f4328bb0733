"""Operations with a known outcome, run by the fuzz worker to check its own classification
(``{"call": "tests.fuzz.harness_checks:NAME"}`` jobs; see tests/test_fuzz.py)."""

from __future__ import annotations

import os
import signal
import sys
import time


def succeed() -> int:
    print("hashview: a note", file=sys.stderr)
    return 0


def refuse() -> int:
    print("hashview: lib.h5: not a HashView library", file=sys.stderr)
    return 1


def refuse_in_two_lines() -> int:
    print("hashview: lib.h5: not a HashView library\nand a second line", file=sys.stderr)
    return 1


def write_native_noise() -> int:
    os.write(2, b"HDF5-DIAG: Error detected in HDF5 (2.0.0) thread 1:\n")
    return 0


def raise_error() -> int:
    raise KeyError("no such field")


def segfault() -> int:
    os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(10)
    return 0


def abort() -> int:
    os.abort()


def hang() -> int:
    time.sleep(3600)
    return 0


def exhaust_address_space() -> int:
    bytearray(1 << 40)  # beyond the worker's address-space cap: MemoryError
    return 0


def grow_resident_memory() -> int:
    block = bytearray(700 << 20)
    block[::4096] = b"x" * len(range(0, len(block), 4096))  # touch every page
    return 0
