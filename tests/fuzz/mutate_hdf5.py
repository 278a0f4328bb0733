"""Structure-aware mutations of a library file, made with h5py on an intact copy.

Root attributes get values of the wrong type, sign or size, or go; datasets are resized (down
to nothing, up to 10**8 rows without writing them), replaced by ones of another dtype, rank or
layout, filled with extreme values, deleted, or replaced by links (external, soft, hard),
virtual datasets or external raw storage pointing outside the file (``/etc/hostname``, a
missing file, the file itself). External raw storage names a stand-in file in the case folder
(a later write through it would otherwise reach the file named), so nothing outside the case
folder is ever written.
"""

from __future__ import annotations

import os
import random
import warnings
from typing import Any, Callable

import h5py
import numpy as np

LIBRARY_ATTRIBUTES = (
    "format", "schema_version", "code_kind", "model_name", "model_arch", "bits",
    "model_sha256", "tile_size", "target_mpp", "created", "updated", "hashview_version",
    "generation", "n_tiles", "n_sources")
ATTRIBUTE_VALUES: tuple[tuple[str, Any], ...] = (
    ("-1", np.int64(-1)), ("0", np.int64(0)), ("7", np.int64(7)), ("2**62", np.int64(2 ** 62)),
    ("int32 min", np.int32(-2 ** 31)), ("uint64 max", np.uint64(2 ** 64 - 1)),
    ("int8 -128", np.int8(-128)), ("schema 1", np.int64(1)), ("schema 3", np.int64(3)),
    ("NaN", np.float64(np.nan)), ("inf", np.float64(np.inf)), ("-inf", np.float64(-np.inf)),
    ("64.5", np.float64(64.5)), ("1e300", np.float64(1e300)), ("float32 64", np.float32(64)),
    ("'64'", "64"), ("''", ""), ("50000-char string", "x" * 50_000),
    ("non-UTF-8 bytes", np.bytes_(b"\xff\xfe\xfd")),
    ("bytes b'hashview-library'", np.bytes_(b"hashview-library")),
    ("int array [1, 2, 3]", np.array([1, 2, 3])), ("empty float array", np.zeros(0)),
    ("2x2 floats", np.ones((2, 2))), ("bool True", np.bool_(True)),
    ("complex 1+2j", np.complex128(1 + 2j)),
    ("string array", np.array(["a", "b"], dtype=h5py.string_dtype())),
    ("compound (1, 2.0)", np.array((1, 2.0), dtype=[("a", "<i4"), ("b", "<f8")])),
    ("empty dataspace", h5py.Empty("f8")), ("'../../etc/passwd'", "../../etc/passwd"),
    ("'dch-16'", "dch-16"), ("'float'", "float"), ("'binary'", "binary"),
    ("'hashview-library'", "hashview-library"),
)
NEW_DTYPES = ("float64", "float16", "int8", "uint8", "int64", "uint64", "bool", "S8",
              "vlen-str", "compound", "complex64")
ROW_COUNTS: tuple[tuple[str, Callable[[int], int]], ...] = (
    ("0", lambda n: 0), ("1", lambda n: 1), ("n-1", lambda n: n - 1), ("n//2", lambda n: n // 2),
    ("n+1", lambda n: n + 1), ("n+1000", lambda n: n + 1000), ("10**8", lambda n: 10 ** 8))
# HDF5 resolves a relative external-storage name against this prefix ("${ORIGIN}": the folder
# of the file that names it), read from the environment at each dataset open; without it a
# write through the stand-in would land in the current folder.
EXTERNAL_FILES_HERE = os.environ.setdefault("HDF5_EXTFILE_PREFIX", "${ORIGIN}")
OUTSIDE_FILES = ("/etc/hostname", "../../../../../../etc/hostname", "missing.bin", "/dev/zero",
                 "/etc")


def _objects(f: h5py.File) -> tuple[list[str], list[str]]:
    """(group names, dataset names) reachable by hard links, without following cycles."""
    groups, datasets, seen = [], [], {h5py.h5o.get_info(f.id).addr}

    def walk(group: h5py.Group, prefix: str, depth: int) -> None:
        for name in group:
            if not isinstance(group.get(name, getlink=True), h5py.HardLink):
                continue
            obj, path = group[name], f"{prefix}/{name}"
            address = h5py.h5o.get_info(obj.id).addr
            if address in seen:
                continue
            seen.add(address)
            if isinstance(obj, h5py.Group):
                groups.append(path)
                if depth < 4:
                    walk(obj, path, depth + 1)
            elif isinstance(obj, h5py.Dataset):
                datasets.append(path)

    walk(f, "", 0)
    return groups, datasets


def _pick_dataset(rng: random.Random, f: h5py.File, resizable: bool = False) -> str | None:
    names = _objects(f)[1]
    if resizable:
        names = [n for n in names if f[n].chunks is not None and f[n].maxshape
                 and f[n].maxshape[0] is None]
    return rng.choice(names) if names else None


def set_attribute(rng: random.Random, f: h5py.File) -> str:
    name = rng.choice(sorted(set(f.attrs) | set(LIBRARY_ATTRIBUTES)))
    label, value = rng.choice(ATTRIBUTE_VALUES)
    f.attrs[name] = value
    return f"set attribute {name} = {label}"


def delete_attribute(rng: random.Random, f: h5py.File) -> str:
    if not f.attrs:
        return "no attribute to delete"
    name = rng.choice(sorted(f.attrs))
    del f.attrs[name]
    return f"delete attribute {name}"


def resize_dataset(rng: random.Random, f: h5py.File) -> str:
    name = _pick_dataset(rng, f, resizable=True)
    if name is None:
        return "no resizable dataset"
    ds = f[name]
    n, (_, count) = ds.shape[0], rng.choice(ROW_COUNTS)
    rows = max(0, count(n))
    ds.resize(rows, axis=0)
    return f"resize {name} from {n} to {rows} rows"


def _converted(rng: random.Random, old: np.ndarray) -> tuple[np.ndarray, str]:
    dtype = rng.choice(NEW_DTYPES)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # lossy casts are the point
        return _cast(old, dtype), dtype


def _cast(old: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "vlen-str":
        return np.array([str(v) for v in old.reshape(-1)], dtype=h5py.string_dtype())
    if dtype == "compound":
        new = np.zeros(old.shape[:1] or (1,), dtype=[("a", "<i8"), ("b", "<f8")])
        if old.size and old.dtype.kind in "iufcb":
            new["a"] = old.reshape(len(new), -1)[:, 0]
        return new
    return old.astype(dtype, casting="unsafe")


def _reshaped(rng: random.Random, data: np.ndarray) -> tuple[np.ndarray, str]:
    shape = rng.choice(("same", "same", "column", "pairs", "scalar", "flat", "leading 1"))
    if shape == "column":
        return data.reshape(len(data), -1)[:, :1] if data.ndim else data.reshape(1, 1), shape
    if shape == "pairs":
        return np.stack([data, data], axis=-1), shape
    if shape == "scalar":
        return data.reshape(-1)[:1].reshape(()) if data.size else np.zeros((), data.dtype), shape
    if shape == "flat":
        return data.reshape(-1), shape
    if shape == "leading 1":
        return data[None], shape
    return data, shape


def replace_dataset(rng: random.Random, f: h5py.File) -> str:
    name = _pick_dataset(rng, f)
    if name is None:
        return "no dataset to replace"
    new, dtype = _converted(rng, np.asarray(f[name][()]))
    new, shape = _reshaped(rng, new)
    layout = rng.choice(("chunked", "contiguous", "compact"))
    del f[name]
    if layout == "chunked" and new.ndim and new.size:
        f.create_dataset(name, data=new, chunks=True, maxshape=(None,) + new.shape[1:])
    elif layout == "compact" and new.nbytes < 60_000 and new.size and new.dtype.kind != "O":
        dcpl = _untimed_dcpl()
        dcpl.set_layout(h5py.h5d.COMPACT)
        space = h5py.h5s.create_simple(new.shape) if new.ndim else h5py.h5s.create(h5py.h5s.SCALAR)
        h5py.h5d.create(f.id, name.encode(), h5py.h5t.py_create(new.dtype), space, dcpl=dcpl)
        f[name][()] = new
    else:
        layout = "contiguous"
        f.create_dataset(name, data=new)
    return f"replace {name} by {dtype} shape {new.shape} ({shape}, {layout})"


def _extreme(rng: random.Random, dtype: np.dtype, n: int) -> Any:
    if dtype.kind == "f":
        return rng.choice((np.nan, np.inf, -np.inf, -1.0, 0.0, 1e300, np.finfo(dtype).max))
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        candidates = [info.min, info.max, 0, 1, n, n + 1, 255, 0x80]
        if dtype.kind == "i":
            candidates += [-1, -n]
        return int(rng.choice([c for c in candidates if info.min <= c <= info.max]))
    return 0


def write_values(rng: random.Random, f: h5py.File) -> str:
    name = _pick_dataset(rng, f)
    if name is None:
        return "no dataset to write"
    ds = f[name]
    if ds.ndim == 0 or ds.shape[0] == 0 or ds.dtype.kind not in "iuf":
        return f"{name} left as it is (nothing numeric to write)"
    n = ds.shape[0]
    value = _extreme(rng, ds.dtype, n)
    rows = rng.choice(("one", "one", "last", "all", "some"))
    if rows == "all":
        ds[...] = value
        where = "every row"
    elif rows == "some":
        picked = sorted(rng.sample(range(n), min(n, rng.randint(2, 8))))
        for i in picked:
            ds[i] = value
        where = f"rows {picked}"
    else:
        i = n - 1 if rows == "last" else rng.randrange(n)
        ds[i] = value
        where = f"row {i}"
    return f"write {value!r} into {name} {where}"


def delete_object(rng: random.Random, f: h5py.File) -> str:
    groups, datasets = _objects(f)
    name = rng.choice(groups + datasets)
    del f[name]
    return f"delete {name}"


def link_elsewhere(rng: random.Random, f: h5py.File) -> str:
    groups, datasets = _objects(f)
    name = rng.choice(groups + datasets)
    others = [d for d in datasets if d != name and not d.startswith(name + "/")]
    targets: list[tuple[str, Callable[[], Any]]] = [
        ("external link to /etc/hostname", lambda: h5py.ExternalLink("/etc/hostname", "/data")),
        ("external link to itself", lambda: h5py.ExternalLink(f.filename.split("/")[-1], name)),
        ("external link to a missing file", lambda: h5py.ExternalLink("missing.h5", "/x")),
        ("soft link to itself", lambda: h5py.SoftLink(name)),
        ("soft link to the root group", lambda: h5py.SoftLink("/")),
    ]
    if others:
        other = rng.choice(others)
        targets.append((f"soft link to {other}", lambda: h5py.SoftLink(other)))
        targets.append((f"hard link to {other}", lambda: f[other]))
    label, make = rng.choice(targets)
    target = make()
    del f[name]
    f[name] = target
    return f"replace {name} by a {label}"


def _untimed_dcpl():
    """A dataset creation list without timestamps, so a case's bytes depend on its seed alone."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_obj_track_times(False)
    return dcpl


def virtual_dataset(rng: random.Random, f: h5py.File) -> str:
    groups, datasets = _objects(f)
    name = rng.choice(datasets)
    ds = f[name]
    shape, dtype = ds.shape or (1,), ds.dtype
    if dtype.kind == "O":
        return f"{name} left as it is (no virtual dataset of {dtype})"
    file_name, source_name = rng.choice((
        ("/etc/hostname", "/data"), ("missing.h5", name), (".", rng.choice(datasets)),
        (f.filename.split("/")[-1], name)))
    layout = h5py.VirtualLayout(shape=shape, dtype=dtype,
                                maxshape=(None,) + shape[1:] if rng.random() < 0.5 else None)
    layout[...] = h5py.VirtualSource(file_name, source_name, shape=shape, dtype=dtype)
    del f[name]
    # create_virtual_dataset stamps the object with its creation time, which would make the
    # same (seed, index) give other bytes a second later; the property list below does not.
    dcpl = layout._get_dcpl(f.filename)
    dcpl.set_obj_track_times(False)
    maxshape = tuple(h5py.h5s.UNLIMITED if m is None else m for m in layout.maxshape) \
        if layout.maxshape is not None else None
    h5py.h5d.create(f.id, name.encode(), h5py.h5t.py_create(dtype, logical=1),
                    h5py.h5s.create_simple(shape, maxshape), dcpl=dcpl)
    return f"replace {name} by a virtual dataset of {file_name}:{source_name}"


def external_storage(rng: random.Random, f: h5py.File) -> str:
    groups, datasets = _objects(f)
    name = rng.choice(datasets)
    ds = f[name]
    if ds.dtype.kind == "O" or not ds.shape:
        return f"{name} left as it is (no external storage for it)"
    shape, dtype = ds.shape, ds.dtype
    # The reader must refuse external storage whatever it names, so the file named is always a
    # stand-in inside the case folder: a later mutation that writes the dataset (or HDF5 itself)
    # then writes there, never to /etc/hostname or the current folder.
    named = rng.choice(OUTSIDE_FILES)
    stand_in = "".join(c if c.isalnum() else "_" for c in named).strip("_") or "outside"
    target = f"ext-{stand_in}"  # relative: resolved in the file's folder (EXTERNAL_FILES_HERE)
    nbytes = max(1, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
    del f[name]
    dcpl = _untimed_dcpl()
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)  # never write to the file named
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_LATE)
    dcpl.set_external(target.encode(), 0, nbytes)
    h5py.h5d.create(f.id, name.encode(), h5py.h5t.py_create(dtype),
                    h5py.h5s.create_simple(shape), dcpl=dcpl)
    return (f"replace {name} by external storage in ext-{stand_in} of the case folder "
            f"(standing in for {named})")


def group_cycle(rng: random.Random, f: h5py.File) -> str:
    groups = _objects(f)[0]
    where = rng.choice(groups) if groups else ""
    f[f"{where}/loop"] = f["/"]
    return f"hard link {where}/loop to the root group"


HDF5_MUTATIONS: tuple[tuple[Callable[[random.Random, h5py.File], str], float], ...] = (
    (set_attribute, 3), (delete_attribute, 1), (resize_dataset, 2), (replace_dataset, 2),
    (write_values, 3), (delete_object, 1), (link_elsewhere, 1), (virtual_dataset, 1),
    (external_storage, 1), (group_cycle, 0.3))


def mutate_hdf5(rng: random.Random, path) -> str:
    """One structural mutation of the (intact) HDF5 file at ``path``; its description."""
    mutations, weights = zip(*HDF5_MUTATIONS)
    mutation = rng.choices(mutations, weights)[0]
    with h5py.File(path, "r+", locking=False) as f:
        return mutation(rng, f)
