"""Indexing on a local Ray cluster against the single-process path, on the same slides.

Two synthetic slides of real Kather tiles (``hashview.bench.synthetic``, made or reused in
``/tmp/hashview-bench``) are indexed into fresh libraries by ``index_paths`` and by
``index_with_ray`` (``--workers`` actors on a local Ray started once, before the clock: a
running cluster is what a real run joins), alternating ``--repeats`` times. Each row gives
tiles/s over the whole call (the Ray one includes starting the actors and loading the model in
each); the libraries of each pair are compared tile by tile (source fingerprint, x, y, code).

    python benchmarks/cluster_index.py --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

WORKDIR = Path("/tmp/hashview-bench")
SLIDES = (("synthetic-12000.tiff", 12000, 0), ("synthetic-8000-seed1.tiff", 8000, 1))


def _slides() -> list[Path]:
    from hashview.bench.synthetic import make_synthetic_slide
    from hashview.bench.throughput import tissue_tiles_folder

    return [make_synthetic_slide(WORKDIR / name, tissue_tiles_folder(), side, seed=seed)
            for name, side, seed in SLIDES]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    import ray

    from _library_content import library_content
    from hashview.cluster import index_with_ray
    from hashview.indexing import index_paths
    from hashview.models import DEFAULT_MODEL, load_model

    WORKDIR.mkdir(parents=True, exist_ok=True)
    slides = _slides()
    loaded = load_model(DEFAULT_MODEL)
    start = time.perf_counter()
    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False,
             object_store_memory=256 << 20, log_to_driver=False, logging_level="WARNING")
    print(json.dumps({"ray_start_s": round(time.perf_counter() - start, 1)}), flush=True)
    rows = []
    try:
        for repeat in range(args.repeats):
            content = {}
            for engine in ("single process", f"ray, {args.workers} workers"):
                library = WORKDIR / f"cluster-{repeat}-{engine.split()[0].strip(',')}.h5"
                library.unlink(missing_ok=True)
                start = time.perf_counter()
                if engine == "single process":
                    report = index_paths(slides, library, model=loaded, device="cpu")
                else:
                    report = index_with_ray(slides, library, model=loaded, device="cpu",
                                            workers=args.workers)
                seconds = time.perf_counter() - start
                assert not report.failed, report.failed
                content[engine] = library_content(library)
                rows.append({"engine": engine, "tiles": report.tiles_added,
                             "seconds": round(seconds, 1),
                             "tiles_per_s": round(report.tiles_added / seconds, 1),
                             "load_1min": round(os.getloadavg()[0], 2)})
                print(json.dumps(rows[-1]), flush=True)
            single, ray_built = content.values()
            differing = sum(single[k] != ray_built.get(k) for k in single)
            print(json.dumps({"same_tiles": single.keys() == ray_built.keys(),
                              "tiles_with_other_codes": differing}), flush=True)
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
