"""Self-supervised pre-training of a hashing net's encoder on unlabelled tissue (a route tried
for the general model; docs/benchmarks.md "General models").

    python benchmarks/pretrain_ssl.py --out /tmp/hv-ssl --threads 2 --steps 800
    python benchmarks/train_general.py mth-64-general --out /tmp/hv-gen \
        --set init_from=/tmp/hv-ssl/mth-64-ssl.safetensors

SimCLR (Chen et al., ICML 2020): two views of each tile are pulled together and pushed away
from every other tile of the batch (NT-Xent on a small projector over the net's deep
features). The views differ in crop, flip, rotation, strong colour jitter and, half the time,
in stain: a view may be the tile re-stained to a random field of another lab (Macenko transfer,
the stain pool of ``train_general.py``), so the encoder is taught that stain is not tissue.

Tiles: every image we may train on and that no measure scores, labels ignored: the Kather
split-0 train tiles, the IDC split-0 train patients, the unlabelled ``tissue_multi_lab`` fields
(BreCaHAD breast, CAMELYON lymph node, OCDC oral, TCGA brain) and the two slides in ``wsi/``,
the large ones cut at two magnifications (crops of ``CROPS`` px resized to the input size).
Never used: the oral and bone sets (zero-shot measures), ``measure_only/``, the Kather test
tiles and the IDC test patients.

The output is a model file of the same arch and bits whose hash layer is untrained: a start
for ``init_from``, never a model to index with.
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

from train_general import (DEFAULT_DATA_ROOT, POOL_FOLDERS, POOL_SLIDES,  # noqa: E402
                           STRONG_COLOUR, labelled_entries, ready_to_run, stain_pool)

CROPS = (150, 300)      # crop sides cut from the large images: about 10x and 5x views
CROPS_PER_IMAGE = 24    # per crop side and pool image (slides: per 512 px field, 2)
IDC_TILES = 2000        # a seeded sample of the IDC train patches (they are near-duplicates)
TEMPERATURE = 0.2
PROJECTION = 128


def _crops(rgb: np.ndarray, side: int, count: int, rng: random.Random) -> list[np.ndarray]:
    from hashview.stain import tissue_fraction
    h, w = rgb.shape[:2]
    found = []
    for _ in range(count * 3):
        if h < side or w < side or len(found) == count:
            break
        y, x = rng.randrange(h - side + 1), rng.randrange(w - side + 1)
        crop = rgb[y:y + side, x:x + side]
        if tissue_fraction(crop) >= 0.5:
            found.append(crop)
    return found


def _resized(rgb: np.ndarray, size: int) -> np.ndarray:
    from hashview.model_input import image_to_array
    return image_to_array(Image.fromarray(rgb), size)


def tile_bank(root: Path, size: int, seed: int,
              leave_out: tuple = ()) -> tuple[np.ndarray, dict, list]:
    """(N, size, size, 3) uint8 tiles of every source above but those named in ``leave_out``
    ("kather", "idc"), their counts per source, and the splits of the labelled sets whose
    training images were used (their labels were not, but a model started from this encoder
    has seen those images: its card must say so)."""
    from hashview.slides import open_source
    rng = random.Random(seed)
    kather, idc, kather_split, idc_split = labelled_entries(root, seed)
    seen = [s.to_dict() for name, s in (("kather", kather_split), ("idc", idc_split))
            if name not in leave_out]
    tiles, counts = [], {}

    def add(source: str, images) -> None:
        before = len(tiles)
        tiles.extend(_resized(im, size) for im in images)
        counts[source] = counts.get(source, 0) + len(tiles) - before

    if "kather" not in leave_out:
        add("kather", (np.asarray(Image.open(e.path).convert("RGB")) for e in kather))
    if "idc" not in leave_out:
        add("idc", (np.asarray(Image.open(e.path).convert("RGB"))
                    for e in rng.sample(idc, min(IDC_TILES, len(idc)))))
    for folder in POOL_FOLDERS:
        for path in sorted((root / folder).iterdir()):
            if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff"):
                rgb = np.asarray(Image.open(path).convert("RGB"))
                for side in CROPS:
                    add(folder, _crops(rgb, side, CROPS_PER_IMAGE, rng))
    for slide in POOL_SLIDES:
        with open_source(root / slide) as source:
            width, height = source.dimensions
            for y in range(0, height - 512 + 1, 512):
                for x in range(0, width - 512 + 1, 512):
                    rgb = np.asarray(source.read_region((x, y), 0, (512, 512)).convert("RGB"))
                    for side in CROPS:
                        add(slide, _crops(rgb, side, 2, rng))
    return np.stack(tiles), counts, seen


def restained_bank(bank: np.ndarray, pool, seed: int) -> np.ndarray:
    """Each tile re-stained to a random pool field (tiles Macenko cannot fit stay as they are)."""
    rng = random.Random(seed + 1)
    return np.stack([rng.choice(pool).restain(tile) for tile in bank])


def nt_xent(z1, z2, temperature: float):
    """SimCLR's loss: each view's partner is its positive, the other 2B - 2 views negatives."""
    import torch
    import torch.nn.functional as F
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / temperature
    n = z1.shape[0]
    logits.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, target)


def pretrain(args) -> dict:
    import torch
    from torch import nn
    from hashview.models import build_model, save_model
    from hashview.models.cards import ModelCard
    from hashview.training.data import AugmentConfig, augment

    torch.manual_seed(args.seed)
    started = time.perf_counter()
    bank, counts, seen = tile_bank(args.data_root, args.input_size, args.seed,
                                   tuple(args.leave_out))
    restained = restained_bank(bank, stain_pool(args.data_root), args.seed)
    prepared = time.perf_counter() - started
    print(json.dumps({"tiles": len(bank), "per_source": counts,
                      "prepare_seconds": round(prepared, 1)}), flush=True)
    net = build_model(args.arch, args.bits, input_size=args.input_size).to(args.device)
    dim = net.hash_head().in_features
    projector = nn.Sequential(nn.Linear(dim, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
                              nn.Linear(512, PROJECTION)).to(args.device)
    params = [p for p in net.parameters()] + list(projector.parameters())
    optimiser = torch.optim.Adam(params, lr=args.lr, weight_decay=1e-6)
    views = AugmentConfig.from_options({**STRONG_COLOUR, "max_zoom": 1.6})
    generator = torch.Generator().manual_seed(args.seed)
    plain, other = torch.from_numpy(bank), torch.from_numpy(restained)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, args.steps)
    losses = []
    net.train(), projector.train()
    train_started = time.perf_counter()
    for step in range(1, args.steps + 1):
        index = torch.randint(0, len(bank), (args.batch,), generator=generator)
        pair = []
        for _ in range(2):
            stained = torch.rand(args.batch, generator=generator) < 0.5
            pixels = torch.where(stained[:, None, None, None], other[index], plain[index])
            x = pixels.permute(0, 3, 1, 2).float().div(255.0)
            x = augment(x, generator, views)
            pair.append(((x - 0.5) / 0.5).to(args.device))  # the cards' mean/std 0.5
        z1, z2 = (projector(net.hash_features(x)) for x in pair)
        loss = nt_xent(z1, z2, TEMPERATURE)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if step % 20 == 0:
            print(json.dumps({"step": step, "loss": round(float(np.mean(losses[-20:])), 4),
                              "seconds": round(time.perf_counter() - train_started)}),
                  flush=True)
    net.eval()
    name = f"{args.arch}-{args.bits}-ssl"
    card = ModelCard(name=name, arch=args.arch, bits=args.bits, input_size=args.input_size,
                     arch_kwargs=net.arch_kwargs(), trained=False,
                     description="self-supervised encoder (SimCLR, stain-changing views); hash "
                                 "layer untrained: a start for init_from only",
                     training={"recipe": "benchmarks/pretrain_ssl.py", "steps": args.steps,
                               "batch": args.batch, "seed": args.seed,
                               "tiles": len(bank), "per_source": counts,
                               "left_out": list(args.leave_out),
                               # the labelled sets' training images seen (labels unused):
                               # hashview.generalisation reads these through init_from
                               "splits": seen,
                               "final_loss": round(float(np.mean(losses[-20:])), 4)})
    args.out.mkdir(parents=True, exist_ok=True)
    save_model(net, card, args.out / name)
    summary = {"saved": str(args.out / name) + ".safetensors", "steps": args.steps,
               "train_seconds": round(time.perf_counter() - train_started, 1)}
    print(json.dumps(summary), flush=True)
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="work folder (not the repo)")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--arch", default="mth")
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64, help="tiles per step (2 views each)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--leave-out", nargs="*", default=[], choices=["kather", "idc"],
                        help="labelled sets whose tiles stay out (kather: then no split of the "
                             "Kather set has a test tile the encoder saw)")
    args = parser.parse_args(argv)
    if not ready_to_run(parser, args):
        return 2
    pretrain(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
