"""The HashView library file (HDF5): codes, tile positions, sources, labels, model provenance.

Schema, crash-safety and concurrency rules: docs/library-format.md.
"""

from hashview.library.fingerprint import fingerprint_file
from hashview.library.records import (CODE_KINDS, FORMAT_NAME, SCHEMA_VERSION, ModelInfo,
                                      SourceRecord, TileRecord)
from hashview.library.store import Library
from hashview.library.writing import LibraryWriteError

__all__ = ["CODE_KINDS", "FORMAT_NAME", "SCHEMA_VERSION", "Library", "LibraryWriteError",
           "ModelInfo", "SourceRecord", "TileRecord", "fingerprint_file"]
