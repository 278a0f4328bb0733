"""What a library holds, as a value two libraries can be compared by."""

from __future__ import annotations

from hashview.library import Library


def library_content(path) -> dict:
    """(source fingerprint, x, y) -> (code bytes, label) of every tile: equal for two libraries
    with the same sources, tiles, codes and labels, whatever their order or source ids."""
    with Library.open(path) as library:
        fingerprints = [s.fingerprint for s in library.sources()]
        table, codes, labels = library.tile_table(), library.codes(), library.label_names()
    return {(fingerprints[s], int(x), int(y)): (code.tobytes(), labels[lab] if lab >= 0 else None)
            for s, x, y, lab, code in zip(table["source_id"], table["x"], table["y"],
                                          table["label_id"], codes)}
