"""Zero-shot search on tiles of real slides from other labs, labelled by outlines drawn by eye.

The two H&E slides of the repository carry QuPath GeoJSON outlines (``tests/data/annotations``):
CMU-1-Small-Region (skin: Dermis, Epidermis; OpenSlide test data) and the TCGA-CR-7395 crop
(Tumor, Stroma; TCGA open access). No bundled model was trained on a label of either (the
general models' stain pool holds colours of other regions of both slides, never their labels).
Each slide's annotated tiles are cut at the model's own tiling (as ``hashview train
--annotations`` cuts them) and searched within the slide, and both slides pooled (4 classes):
70/30 per class, seeds 0-4, balanced vote accuracy@5 (the classes are uneven and small) and mAP
as ``hashview eval`` scores them. The sets are
small (tens of tiles a class): read the numbers as rough, beside the larger tables.

    python benchmarks/annotated_slides.py                      # every bundled model
    python benchmarks/annotated_slides.py --models mth-64-general dch-64-general
    python benchmarks/annotated_slides.py --models mth-64-general \
        --normalise ../shared/data/samples/he-stain-target-1000.png   # as a normalised library
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
SLIDES = {"cmu": DATA / "CMU-1-Small-Region.svs",
          "tcga": DATA / "TCGA-CR-7395-01A-01-TS1-crop.svs"}
ANNOTATIONS = DATA / "annotations"
# A vote over 10 hits cannot go to a class with 7 database tiles (Epidermis) unless 6 of them
# are found: 5 hits keep the vote meaningful on sets this small.
VOTE_K = 5


def _cut(name: str, slides: list[Path], params, root: Path):
    from hashview.annotations.patches import cut_annotated_tiles
    from hashview.annotations.tiles import AnnotationOptions

    folder = root / f"{name}-{params.tile_size}-{params.target_mpp}"
    if not folder.is_dir():
        cut = cut_annotated_tiles(slides, folder, AnnotationOptions(ANNOTATIONS), params)
        print(f"# {name} at {params.tile_size} px, {params.target_mpp} um/px: {cut.labels}",
              file=sys.stderr)
    return folder


def _score(model, folder: Path, normaliser=None) -> str:
    from hashview.evaluation import evaluate_model

    mean = evaluate_model(model, folder, protocol="hatdh", seeds=range(5), device="cpu",
                          vote_k=VOTE_K, stain_normaliser=normaliser)["mean"]
    return f"{mean[f'balanced_accuracy@{VOTE_K}']:.3f} / {mean['map']:.3f}"


def main(argv=None) -> int:
    from hashview.indexing import model_tiling
    from hashview.models import list_models, load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="default: every trained bundled model")
    parser.add_argument("--normalise", metavar="REF", default=None,
                        help="stain-normalise every tile (database and queries) to this "
                             "reference (Macenko), as a library indexed with --stain-normalise")
    args = parser.parse_args(argv)
    normaliser = None
    if args.normalise:
        from hashview.stain import fit_stain_target
        normaliser = fit_stain_target(args.normalise)
    names = args.models or [c.name for c in list_models() if c.trained]
    root = Path(tempfile.mkdtemp(prefix="hashview-annotated-slides-"))
    print("| model | CMU-1 skin (Dermis, Epidermis) balanced@5 / mAP | TCGA crop (Tumor, Stroma) "
          "| both slides pooled (4 classes) | s |")
    print("|---|---|---|---|---|")
    try:
        for name in names:
            start = time.perf_counter()
            model = load_model(name)
            params = model_tiling(model.card)
            cells = [_score(model, _cut(key, [slide], params, root), normaliser)
                     for key, slide in SLIDES.items()]
            cells.append(_score(model, _cut("both", list(SLIDES.values()), params, root),
                                normaliser))
            print(f"| {name} | {' | '.join(cells)} | {time.perf_counter() - start:.0f} |",
                  flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
