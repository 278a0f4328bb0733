"""Checks of a FAISS binary IVF payload read from an index sidecar, before and after FAISS reads it.

A sidecar's checksum only proves the payload is the one its header describes, not that the file
came from HashView: these checks bound what FAISS may allocate and what a search may return.
"""

from __future__ import annotations

import struct
from pathlib import Path

import faiss
import numpy as np

from hashview.errors import LibraryError


class _Fields:
    """Little-endian fields read in order from a FAISS payload, each checked to be there."""

    def __init__(self, data: bytes, path: Path):
        self.data, self.at, self.path = data, 0, path

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.at + size > len(self.data):
            raise LibraryError(self.path, "corrupt index file (payload ends early)")
        values = struct.unpack_from(fmt, self.data, self.at)
        self.at += size
        return values if len(values) > 1 else values[0]

    def expect(self, fmt: str, wanted, what: str) -> None:
        if self.take(fmt) != wanted:
            raise LibraryError(self.path, f"corrupt index file (payload {what} does not match "
                                          "its header)")


def check_ivf_payload(payload: bytes, identity, nlist: int, path: Path) -> None:
    """Check every size an IndexBinaryIVF payload declares before FAISS reads it: FAISS sizes its
    vectors from these fields before reading them, so one flipped bit could allocate gigabytes.
    The layout is FAISS's binary IVF serialisation (index header, flat quantizer, direct map,
    array inverted lists); anything else is refused and the index is built again."""
    code_size = identity.bits // 8
    fields = _Fields(payload, path)
    for magic, ntotal, what in ((b"IBwF", identity.n_tiles, "index"),
                                (b"IBxF", nlist, "quantizer")):
        fields.expect("<4s", magic, f"{what} type")
        fields.expect("<ii", (identity.bits, code_size), f"{what} code size")
        fields.expect("<q", ntotal, f"{what} count")
        fields.take("<?i")  # is_trained, metric type
        if what == "index":
            fields.expect("<Q", nlist, "list count")
            fields.take("<Q")  # nprobe: the header's is used
    fields.expect("<Q", nlist * code_size, "centroid bytes")
    fields.take(f"<{nlist * code_size}s")
    fields.take("<B")  # direct map type
    fields.expect("<Q", 0, "direct map")
    fields.expect("<4s", b"ilar", "list type")
    fields.expect("<QQ", (nlist, code_size), "list shape")
    layout = fields.take("<4s")
    count = fields.take("<Q")
    if layout == b"full" and count == nlist:
        sizes = [fields.take("<Q") for _ in range(nlist)]
    elif layout == b"sprs" and count % 2 == 0 and count <= 2 * nlist:
        sizes = [0] * nlist
        for _ in range(count // 2):
            list_no, size = fields.take("<QQ")
            if list_no >= nlist:
                raise LibraryError(path, "corrupt index file (a list number beyond the lists)")
            sizes[list_no] = size
    else:
        raise LibraryError(path, "corrupt index file (unknown inverted-list layout)")
    if sum(sizes) != identity.n_tiles or \
            len(payload) - fields.at != sum(sizes) * (code_size + 8):
        raise LibraryError(path, "corrupt index file (its list sizes do not add up)")


def check_list_ids(index: faiss.IndexBinaryIVF, path: Path) -> None:
    """Every stored id must name a tile once: a payload whose checksum was made to fit could
    otherwise send a search to tile 10^18 (one pass over the lists, no copy of the codes)."""
    lists = index.invlists
    seen = np.zeros(index.ntotal, bool)
    for list_no in range(index.nlist):
        n = lists.list_size(list_no)
        if n == 0:
            continue
        ids = faiss.rev_swig_ptr(lists.get_ids(list_no), n)
        if ids.min() < 0 or ids.max() >= index.ntotal or seen[ids].any():
            raise LibraryError(path, "corrupt index file (an inverted list names a tile that "
                                     "is not in the library)")
        seen[ids] = True
    if not seen.all():
        raise LibraryError(path, "corrupt index file (its inverted lists leave tiles out)")
