"""``train_from_folder``: what ``hashview train`` and the app's training job run.

Phases, each checkpointed and resumable:

1. **held-out run**: train on the training part of the split (``out_dir/held-out/`` when a
   final retrain follows, else ``out_dir``), then score it and its start model on the held-out
   part (:mod:`hashview.training.report`), written to ``held-out-report.json`` beside it;
2. **final retrain** (unless ``keep_held_out``): the same recipe on every patch of the folder,
   saved in ``out_dir``. Its card carries the report of phase 1 (measured before the retrain,
   as the card says) and the code statistics of the final model itself.

A resumed run skips a finished held-out run (its report file is there) and continues the
phase whose checkpoint it finds.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

from hashview.errors import HashViewError, ModelError
from hashview.fileio import atomic_write_bytes
from hashview.progress import ProgressCallback, report as report_progress
from hashview.training import checkpoint as ckpt
from hashview.training.config import TrainConfig
from hashview.training.defaults import (CHOOSE_START, CHOOSE_START_FRACTION, start_model_name,
                                        start_recipe)
from hashview.training.loop import TrainResult, train
from hashview.training.report import (MAP_KEY, QUALITY_COLLAPSED, build_report, code_stats,
                                      is_collapsed, model_report)

SPLIT_FILE = "split.json"
HELD_OUT_DIR = "held-out"
REPORT_FILE = "held-out-report.json"
# The held-out report compares the trained model with every other trained bundled model as it
# is up to this folder size: 13 models scored 150 patches in 7.6-8.2 s on 2 CPU cores, so a
# folder this size adds about 100 s; larger folders are not compared (the report says so).
COMPARE_MAX_PATCHES = 2000


def _held_out_dir(out_dir: Path, keep_held_out: bool) -> Path:
    return out_dir if keep_held_out else out_dir / HELD_OUT_DIR


def _check_resumable(out_dir: Path, held_dir: Path) -> None:
    if not any(ckpt.checkpoint_exists(d) for d in (out_dir, held_dir)) \
            and not (held_dir / REPORT_FILE).is_file():
        where = "(the folder does not exist)" if not out_dir.exists() else "in this folder"
        raise ModelError(out_dir, f"no training checkpoint to resume {where}; run without "
                                  "--resume to start afresh")


def _patch_size(entries) -> Optional[int]:
    """The side of the folder's patches when they are all one square size, else None."""
    from PIL import Image

    sizes = set()
    for entry in entries:
        try:
            with Image.open(entry.path) as image:
                sizes.add(image.size)
        except OSError:
            return None  # the training data loader reports unreadable images in one line
        if len(sizes) > 1:
            return None
    from hashview.tiling import TilingParams

    (width, height), = sizes or {(0, 1)}
    try:  # a size the tiling accepts, else the defaults apply
        return TilingParams(tile_size=width).tile_size if width == height else None
    except ValueError:
        return None


def _config(arch, bits, epochs, batch_size, lr, seed, dataset_name, start_name, start,
            options: dict) -> TrainConfig:
    """The start model's recipe, overridden by whatever the caller set explicitly."""
    explicit = {k: v for k, v in (("epochs", epochs), ("batch_size", batch_size), ("lr", lr))
                if v is not None}
    recipe = start_recipe(start) if start is not None else {}
    if "epochs" in explicit and "pretrain_epochs" not in options:
        recipe.pop("pretrain_epochs", None)  # the start's stage split was for its own epochs
    fields = {**recipe, "dataset": dataset_name, **explicit, **options}
    if start_name is not None:
        fields["init_from"] = start_name
    return TrainConfig.from_options(arch=arch, bits=int(bits), seed=int(seed), **fields)


def _inner_split(data, split, fraction: float):
    """The training part split again, as the folder was, with the next seed: ``fraction`` of
    it to validate on (None when 0). Never the held-out part: the report must stay an
    estimate on patches nothing was chosen by."""
    from hashview.splits import make_split

    if not fraction:
        return None
    train_idx, _ = split.indices(data.paths)
    paths = [data.paths[i] for i in train_idx]
    labels = [data.labels[i] for i in train_idx]
    patients = [data.patients[i] for i in train_idx]
    try:
        inner = make_split(paths, labels, data.name, split.protocol, split.seed + 1,
                           1.0 - fraction, patients)
    except (ValueError, HashViewError):
        inner = None
    if inner is None or not inner.test:  # too few patients to split by patient: by patch
        inner = make_split(paths, labels, data.name, "hatdh", split.seed + 1, 1.0 - fraction)
    return inner


def _choose_start(arch: str, bits: int, default: str, data, split, fraction: float,
                  device) -> tuple[str, dict]:
    """The bundled model of ``arch`` and ``bits`` that retrieves best as it is (mAP) on the
    inner validation part, the default start on a tie; and every candidate's score."""
    from hashview.models import list_models, load_model

    inner = _inner_split(data, split, fraction)
    names = [c.name for c in list_models() if c.source == "bundled" and c.trained
             and c.arch == arch and int(c.bits) == int(bits)]
    if inner is None or default not in names:
        return default, {}
    scores = {name: model_report(load_model(name), data, inner, device)[MAP_KEY]
              for name in names}
    return max(names, key=lambda n: (scores[n], n == default)), scores


def _reference_model(arch: str, start_name: Optional[str]):
    """The model the trained one is compared with and its role: its start, or (from scratch)
    the default bundled model as it is."""
    from hashview.models import DEFAULT_MODEL, load_model

    if start_name:
        return load_model(start_name), "start"
    return load_model(DEFAULT_MODEL), "reference"


def _bundled_reports(data, split, device, exclude: str,
                     progress) -> tuple[dict, dict, Optional[str]]:
    """model_report of every other trained bundled model as it is on the held-out part, the
    one-line reason of each that could not be scored, and why none was compared (or None)."""
    from hashview.models import list_models, load_model

    if len(data.entries) > COMPARE_MAX_PATCHES:
        return {}, {}, (f"the folder has {len(data.entries)} patches, over the "
                        f"{COMPARE_MAX_PATCHES} compared")
    names = [c.name for c in list_models()
             if c.source == "bundled" and c.trained and c.name != exclude]
    reports, failed = {}, {}
    for number, name in enumerate(names):
        report_progress(progress, "evaluating", number, len(names),
                        f"bundled model {name} as it is")
        try:  # a damaged bundled file must not cost the user the model they just trained
            reports[name] = model_report(load_model(name), data, split, device)
        except HashViewError as exc:
            failed[name] = str(exc)
    return reports, failed, None


def _held_out_phase(config, data, split, held_dir: Path, reference, progress, resume: bool,
                    device, chosen_by: dict) -> tuple[TrainResult, dict]:
    from hashview.models import load_model
    from hashview.models.store import rewrite_card

    inner = _inner_split(data, split, config.inner_val_fraction)
    fit_idx, val_idx = (inner.indices(data.paths) if inner is not None
                        else (split.indices(data.paths)[0], []))
    result = train(config, [data.entries[i] for i in fit_idx], held_dir, progress=progress,
                   resume=resume and ckpt.checkpoint_exists(held_dir),
                   val_entries=[data.entries[i] for i in val_idx] or None,
                   split=split.to_dict())
    report_progress(progress, "evaluating", 0, 2, "held-out report")
    trained = model_report(load_model(result.model_path), data, split, device)
    report_progress(progress, "evaluating", 1, 2, "held-out report")
    loaded, role = reference
    start = model_report(loaded, data, split, device)
    report_progress(progress, "evaluating", 2, 2, "held-out report")
    bundled, failed, skipped = _bundled_reports(data, split, device, loaded.card.name, progress)
    report = build_report(trained, start, role, split, bundled, skipped)
    if failed:
        report["bundled_models_failed"] = failed
    report["measured_on"] = "this model, trained on the training part of the folder only"
    report["method"] = config.method
    report.update(chosen_by)  # the inner validation scores of the candidate starts
    if "kept_epoch" in result.card.training:  # the final retrain stops at the same epoch
        report["kept_epoch"] = result.card.training["kept_epoch"]
        report["inner_validation"] = {"n_images": len(val_idx),
                                      "map": result.card.training["kept_val_map"]}
    atomic_write_bytes(held_dir / REPORT_FILE, json.dumps(report, indent=2).encode("utf-8"))
    result.card = rewrite_card(result.model_path, metrics=report, quality=report["quality"])
    return result, report


def train_from_folder(data_folder, arch: str, bits: int, out_dir, epochs: Optional[int] = None,
                      batch_size: Optional[int] = None, lr: Optional[float] = None,
                      seed: int = 0, split_file=None, protocol: str = "hatdh",
                      progress: Optional[ProgressCallback] = None, resume: bool = False,
                      train_fraction: float = 0.7, from_scratch: bool = False,
                      keep_held_out: bool = False, choose_start: Optional[bool] = None,
                      **options) -> TrainResult:
    """Train ``arch``-``bits`` on a labelled patch folder: a held-out run and its report, then
    (unless ``keep_held_out``) the final model on every patch (see the module notes).

    The run starts from ``init_from`` if given, else (unless ``from_scratch``) from the
    architecture's default model (:data:`hashview.training.defaults.DEFAULT_START`), whose
    recipe (input size, epochs, batch size, loss knobs) it takes; explicit arguments win. The
    split comes from ``split_file``; else, when resuming, from ``out_dir/split.json``; else it
    is made with ``protocol`` ("hatdh": 70/30 per class; "patient": patient-level, needs
    patient ids in labels.csv) and ``seed``. ``options`` are further :class:`TrainConfig`
    fields or keys of the architecture's ``objective_options``. The result's ``report`` is the
    held-out report (also the card's ``metrics``; its ``quality`` the card's).
    """
    from hashview.evaluation import load_dataset, resolve_splits
    from hashview.models import load_model
    from hashview.splits import Split

    out_dir = Path(out_dir)
    held_dir = _held_out_dir(out_dir, keep_held_out)
    if resume:
        _check_resumable(out_dir, held_dir)
    data = load_dataset(data_folder)
    saved = out_dir / SPLIT_FILE
    if split_file is None and resume and saved.is_file():
        split_file = saved
    if split_file is not None:
        split = Split.load(split_file)
    else:
        split = resolve_splits(data, None, protocol, [seed], train_fraction)[0]
    init_from = options.pop("init_from", None)
    start_name = start_model_name(arch, init_from, from_scratch)
    reference = _reference_model(arch, start_name)
    config = _config(arch, bits, epochs, batch_size, lr, seed, data.name, start_name,
                     reference[0] if start_name else None, options)
    config.resolved()  # an invalid option is refused before anything is written
    candidates = {}
    if start_name and not init_from and (CHOOSE_START if choose_start is None
                                         else choose_start):
        chosen, candidates = _choose_start(config.resolved().arch, bits, start_name, data,
                                           split, config.inner_val_fraction
                                           or CHOOSE_START_FRACTION, config.device)
        if chosen != start_name:
            start_name, reference = chosen, _reference_model(arch, chosen)
            config = _config(arch, bits, epochs, batch_size, lr, seed, data.name, chosen,
                             reference[0], options)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(out_dir, f"cannot make the output folder ({exc.strerror or exc})") \
            from None
    split.save(saved)  # before training (atomically): a resumed run must find the same split
    device = config.device
    if resume and (held_dir / REPORT_FILE).is_file() and not keep_held_out:
        report = json.loads((held_dir / REPORT_FILE).read_text(encoding="utf-8"))
        held = None
    else:
        chosen_by = {"start_candidates": candidates} if candidates else {}
        held, report = _held_out_phase(config, data, split, held_dir, reference, progress,
                                       resume, device, chosen_by)
    tile_size = _patch_size(data.entries)
    if keep_held_out:
        final = held
    else:
        if "kept_epoch" in report:  # no patch left to validate on: stop where validation did
            config = dataclasses.replace(config, stop_epoch=int(report["kept_epoch"]),
                                         inner_val_fraction=0.0)
        final = train(config, data.entries, out_dir, progress=progress,
                      resume=resume and ckpt.checkpoint_exists(out_dir), split=None)
        report = {**report, "measured_on": (
            f"the held-out run (in {HELD_OUT_DIR}/), trained on {report['held_out']['n_database']}"
            f" patches before this model was retrained on all {len(data.entries)}")}
        report["final_codes"] = code_stats(_encode_all(load_model(final.model_path), data,
                                                       device), int(config.bits),
                                           len(set(data.labels)))
        if is_collapsed(report["final_codes"]):
            report["quality"] = QUALITY_COLLAPSED
            report["reasons"] = report["reasons"] + ["the final model's codes collapsed"]
    from hashview.models.store import rewrite_card

    final.card = rewrite_card(final.model_path, metrics=report, quality=report["quality"],
                              tile_size=tile_size)
    final.report = report
    return final


def _encode_all(loaded, data, device):
    from hashview.evaluation import encode_folder_split
    return encode_folder_split(loaded, data.entries, device)
