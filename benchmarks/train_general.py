"""Train the general tissue models: one recipe per architecture, judged on generalisation.

    python benchmarks/train_general.py mth-64-general --out /tmp/hv-general --threads 2 --install

What the recipe adds to the single-set recipes of benchmarks/train_models.py, each because it
measured better on tissue the model never saw (docs/benchmarks.md "General models"):

1. **Two labelled sets at once**: the Kather split-0 train tiles and the IDC patient split-0
   train patients, their labels kept apart (``kather:TUMOR``, ``idc:IDC``), so the codes have to
   tell colorectal tissue types and breast carcinoma apart with one code book.
2. **Stain mixing**: every labelled Kather training tile is also given, ``copies`` times, the
   stain of a random field from other labs (Macenko transfer, :mod:`hashview.stain`), fitted on
   unlabelled H&E we may train on: ``tissue_multi_lab`` (BreCaHAD breast, CAMELYON lymph node,
   OCDC oral, TCGA brain) and regions of the two slides in ``wsi/``. Colour jitter alone
   (HED, hue, saturation, grey) did not close the cross-stain gap; real other-lab stains did.
3. **Strong colour jitter** on every image (HED scale 0.2, hue 0.1, saturation 0.3, grey 0.2).

Never used for training: the oral and bone sets (zero-shot measures), ``measure_only/``
(non-commercial; stain targets of the measurement only), the Kather test tiles and the IDC test
patients. The stain targets of the cross-stain measure (IDC, oral, CMU-1, TCGA, MoNuSeg, the
TIAToolbox target) are other images than the training stain pool, except that both use regions
of the two slides (different regions: the measure fits on the slide's centre; the pool on
512-px fields).

Data are read from ``../shared/data`` (``--data-root``); the prepared images (crops and stain
copies), checkpoints and models go to ``--out`` (outside the repository). With ``--install`` the
model and its card are written to ``resources/models/``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from train_models import parse_with_run_options  # noqa: E402  (benchmarks/, beside this file)

DEFAULT_DATA_ROOT = ROOT.parent / "shared" / "data"
KATHER, IDC = "kather2016_subset", "idc_breast"
POOL_FOLDERS = ("tissue_multi_lab/brecahad_breast", "tissue_multi_lab/camelyon_resampled",
                "tissue_multi_lab/ocdc_oral_tiles", "tissue_multi_lab/tcga_lgg_tiles")
POOL_SLIDES = ("wsi/CMU-1-Small-Region.svs", "wsi/TCGA-CR-7395-01A-01-TS1-crop.svs")
FIELD_CROP = 192       # crops of each pool image; a field's stain is fitted on 4 of them
SLIDE_FIELD = 512      # slides are cut into fields of this side
MIN_TISSUE = 0.5       # crops with less tissue (by the stain module's measure) are skipped
STRONG_COLOUR = {"hed_scale": 0.2, "hed_shift": 0.05, "hue": 0.1, "saturation": 0.3,
                 "grayscale": 0.2, "brightness": 0.1, "contrast": 0.2}
CREDITS = [
    "Kather JN et al., Sci Rep 6:27988 (2016), doi:10.5281/zenodo.53169, CC-BY 4.0 "
    "(kather2016_subset, split-0 train tiles)",
    "Janowczyk A, Madabhushi A, J Pathol Inform 2016;7:29; Cruz-Roa A et al., SPIE Medical "
    "Imaging 2014 (idc_breast, patient split-0 train patients; Kaggle copy CC0)",
    "stain pool (colours only, no labels): BreCaHAD (CC BY 4.0), CAMELYON (CC0), OCDC "
    "(CC BY 4.0), TCGA LGG tiles (TCGA open access), OpenSlide CMU-1 (CC0), TCGA-CR-7395 "
    "(TCGA open access)"]

RECIPES = {
    # 40 x 60 steps: Kather mAP 0.800 -> 0.866 and stain mAP 0.694 -> 0.772 over 20 x 30.
    "mth-64-general": dict(arch="mth", bits=64, input_size=64, epochs=40, batch_size=64,
                           steps_per_epoch=60, copies=4),
    # HATDH and DCH keep their single-set recipes' loss settings (benchmarks/train_models.py).
    # HATDH 160 x 60 steps: stain vote 0.562 (40 x 60) -> 0.635 (80) -> 0.719 (160), Kather
    # mAP 0.579 -> 0.767 -> 0.796 (docs/benchmarks.md "HATDH general").
    "hatdh-64-general": dict(arch="hatdh", bits=64, input_size=96, epochs=160, batch_size=64,
                             steps_per_epoch=60, copies=4, normalise_by_bits=True,
                             triplet_mode="semi-hard", aux_ce_weight=1.0),
    "dch-64-general": dict(arch="dch", bits=64, input_size=96, epochs=20, batch_size=64,
                           steps_per_epoch=30, copies=4, pretrain_epochs=7,
                           label_smoothing=0.1, ema_decay=0.98),
}


def pool_fields(root: Path) -> list[tuple[str, np.ndarray]]:
    """(name, RGB mosaic of up to 4 tissue crops) per unlabelled field of the stain pool."""
    from hashview.slides import open_source
    from hashview.stain import tissue_fraction

    def crops_of(rgb: np.ndarray) -> list[np.ndarray]:
        h, w = rgb.shape[:2]
        found = []
        for y in range(0, h - FIELD_CROP + 1, FIELD_CROP):
            for x in range(0, w - FIELD_CROP + 1, FIELD_CROP):
                crop = rgb[y:y + FIELD_CROP, x:x + FIELD_CROP]
                if tissue_fraction(crop) >= MIN_TISSUE:
                    found.append(crop)
        return found[:4]

    fields = []
    for folder in POOL_FOLDERS:
        for path in sorted((root / folder).iterdir()):
            if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff"):
                crops = crops_of(np.asarray(Image.open(path).convert("RGB")))
                if len(crops) >= 2:
                    fields.append((f"{folder}/{path.name}", np.concatenate(crops, axis=1)))
    for slide in POOL_SLIDES:
        with open_source(root / slide) as source:
            width, height = source.dimensions
            for y in range(0, height - SLIDE_FIELD + 1, SLIDE_FIELD):
                for x in range(0, width - SLIDE_FIELD + 1, SLIDE_FIELD):
                    region = source.read_region((x, y), 0, (SLIDE_FIELD, SLIDE_FIELD))
                    crops = crops_of(np.asarray(region.convert("RGB")))
                    if len(crops) >= 2:
                        fields.append((f"{slide}@{x},{y}", np.concatenate(crops, axis=1)))
    return fields


def stain_pool(root: Path):
    """Fitted stain transfers of every pool field Macenko can fit."""
    from hashview.errors import HashViewError
    from hashview.stain import StainTransfer

    pool = []
    for name, pixels in pool_fields(root):
        try:
            pool.append(StainTransfer(pixels, "macenko", name))
        except HashViewError:
            continue  # a field Macenko cannot fit adds no stain
    return pool


def stain_mixed_copies(entries, pool, copies: int, seed: int, out: Path):
    """``copies`` re-stained copies of each entry, written under ``out``; PatchEntry list."""
    from hashview.slides.folders import PatchEntry

    rng = random.Random(seed)
    made = []
    for index, entry in enumerate(entries):
        rgb = np.asarray(Image.open(entry.path).convert("RGB"))
        for copy in range(copies):
            transfer = rng.choice(pool)
            path = out / f"{index:05d}-{copy}.png"
            Image.fromarray(transfer.restain(rgb)).save(path)
            made.append(PatchEntry(path, entry.label))
    return made


def labelled_entries(root: Path, seed: int):
    """Kather split-``seed`` train tiles and IDC patient split-``seed`` train patients, with
    their labels kept apart; and the two splits (recorded in the card)."""
    from hashview.evaluation import load_dataset, resolve_splits
    from hashview.slides.folders import PatchEntry

    kather, idc = load_dataset(root / KATHER), load_dataset(root / IDC)
    kather_split = resolve_splits(kather, None, "hatdh", [seed])[0]
    idc_split = resolve_splits(idc, None, "patient", [seed])[0]
    kather_train, _ = kather_split.indices(kather.paths)
    idc_train, _ = idc_split.indices(idc.paths)
    kather_entries = [PatchEntry(kather.entries[i].path, f"kather:{kather.labels[i]}")
                      for i in kather_train]
    idc_entries = [PatchEntry(idc.entries[i].path, f"idc:{idc.labels[i]}") for i in idc_train]
    return kather_entries, idc_entries, kather_split, idc_split


def run_recipe(name: str, args) -> dict:
    import torch
    from hashview.models import load_model, save_model
    from hashview.training import TrainConfig, train

    recipe = {**RECIPES[name], **args.set}
    copies, joint = recipe.pop("copies"), recipe.pop("joint", True)
    # the training seed (weights, batches, augmentation, stain copies); the data splits stay
    # split 0, so every seed is judged on the same held-out tiles and patients
    seed = int(recipe.pop("seed", 0))
    started = time.perf_counter()
    kather_entries, idc_entries, kather_split, idc_split = labelled_entries(args.data_root, 0)
    idc_entries = idc_entries if joint else []
    pool = stain_pool(args.data_root) if copies else []
    mixed_dir = args.out / name / "stain-mixed"
    mixed_dir.mkdir(parents=True, exist_ok=True)
    mixed = stain_mixed_copies(kather_entries, pool, copies, seed, mixed_dir)
    prepared = time.perf_counter() - started
    print(json.dumps({"model": name, "kather": len(kather_entries), "idc": len(idc_entries),
                      "stain_pool_fields": len(pool), "stain_mixed": len(mixed),
                      "prepare_seconds": round(prepared, 1)}), flush=True)
    config = TrainConfig(name=name, device=args.device, dataset="kather", seed=seed,
                         **{"sampler": "balanced", "augment_options": dict(STRONG_COLOUR),
                            **recipe})
    result = train(config, kather_entries + mixed + idc_entries, args.out / name / "run")
    card = load_model(result.model_path).card
    card.description = (f"{recipe['arch'].upper()} {recipe['bits']}-bit general tissue model: "
                        "Kather colorectal and IDC breast labels together, Kather tiles also in "
                        "other labs' stains, strong colour jitter")
    card.tile_size, card.target_mpp = 150, 0.495  # Kather's tiles: 150 px at 0.495 um/px
    card.training = {**card.training, "recipe": f"benchmarks/train_general.py {name}" + "".join(
                         f" --set {key}={json.dumps(value)}" for key, value in args.set.items()),
                     "seed": seed, "wall_seconds_2cpu": round(result.seconds, 1),
                     "prepare_seconds": round(prepared, 1), "stain_pool_fields": len(pool),
                     "stain_mixed_copies": copies, "data_credits": CREDITS,
                     # the second labelled set's split (evaluation keeps its patients out)
                     "splits": [idc_split.to_dict()] if joint else []}
    card.split = kather_split.to_dict()
    install = args.install and not args.set  # a variant is never installed
    stem = (ROOT / "resources" / "models" / name) if install else (args.out / "final" / name)
    stem.parent.mkdir(parents=True, exist_ok=True)
    net = load_model(result.model_path).net
    card = save_model(net, card, stem)
    summary = {"model": name, "saved": str(stem) + ".safetensors", "sha256": card.sha256,
               "train_seconds": round(result.seconds, 1), "torch_threads":
               torch.get_num_threads()}
    print(json.dumps(summary), flush=True)
    return summary


def ready_to_run(parser, args) -> bool:
    """Refuse an ``--out`` inside the repository (usage error); False, with one line, when
    data the recipes read are missing; else set the torch thread count."""
    try:
        args.out.resolve().relative_to(ROOT)
        parser.error("--out must be outside the repository")
    except ValueError:
        pass
    missing = [p for p in (KATHER, IDC, *POOL_FOLDERS, *POOL_SLIDES)
               if not (args.data_root / p).exists()]
    if missing:
        print(f"error: data missing under {args.data_root}: {', '.join(missing)} "
              "(see ../shared/data/README.md, or pass --data-root)", file=sys.stderr)
        return False
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help=f"any of {sorted(RECIPES)}")
    parser.add_argument("--out", type=Path, required=True, help="work folder (not the repo)")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--install", action="store_true",
                        help="write the model and its card to resources/models/")
    args = parse_with_run_options(parser, argv, "override a recipe option (a variant, never "
                                  "installed): TrainConfig fields, copies=N (0: no stain "
                                  "mixing), joint=false (Kather only)")
    unknown = [n for n in args.models if n not in RECIPES]
    if unknown:
        parser.error(f"choose models from {sorted(RECIPES)}")
    if not ready_to_run(parser, args):
        return 2
    for name in args.models:
        run_recipe(name, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
