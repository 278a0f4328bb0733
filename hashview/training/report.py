"""The held-out report of a training run on a user's folder, and its quality verdict.

Database = the training part of the folder, queries = the held-out part; scored with the same
helpers as ``hashview eval`` (:func:`hashview.evaluation.score_splits`) for the trained model
and for the model it started from (from scratch: the default bundled model, as a reference),
so the user sees whether training helped. Code statistics are taken over the whole folder.

Verdicts (``quality`` in the model card):

- ``"collapsed"``: fewer distinct codes than an eighth of the images or than the number of
  classes, or more than half the bits dead (constant over every image). Measured on the own
  folders (benchmarks/own_folder.py, docs/training.md): bundled models used as they are give
  23-146 distinct codes (0.22-0.97 of the tiles; dch-64-idc 35 over 150 oral tiles at 0.78
  vote@10), so distinct codes alone cannot tell a weak-but-working model from the reported
  runs from scratch at 29 codes over 130 tiles. An eighth flags only the clear collapses
  (1 code, a handful); the 29-code run, at chance vote@10, is caught by the next check.
- ``"worse_than_start"``: held-out vote@10 below the start model's by more than the sampling
  error of the start's accuracy over the held-out queries (sqrt(p(1-p)/n), at least 0.02): with
  40 queries at p = 0.8 that is 0.063, so a drop of one or two queries is not called a
  regression but a real one is.
- ``"no_gain"``: not worse, but no better either: neither held-out vote@10 nor mAP is above
  the start's (a run that kept epoch 0, the start as it is, lands here). Using the start as it
  is serves as well, and the user is told so.
- ``"ok"`` otherwise.

Beside its start, the trained model is compared with every other trained bundled model as it
is on the same held-out part (``bundled_models``; folders of up to
:data:`hashview.training.folder_run.COMPARE_MAX_PATCHES` patches). The best of them
(``best_bundled``) is picked on those same queries, so it is an optimistic bar; when it beats
the trained model by the rule that makes a start beat it (``outdone_by``), the report says so
(``bundled_better``) and :func:`warning_line` gives a NOTE naming it: measured on the own
folders (docs/benchmarks.md), a model refitted on a folder of four new IDC patients stayed
0.11-0.16 vote@10 below the IDC-trained bundled models as they are, and the user should hear
that. The quality verdict itself stays about the start.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from hashview.metrics import is_float_codes

VOTE_KEY, BALANCED_KEY, MAP_KEY = "vote_accuracy@10", "balanced_accuracy@10", "map"
DISTINCT_FRACTION_MIN = 0.125  # fewer distinct codes than this fraction of images: collapsed
DEAD_BITS_FRACTION_MAX = 0.5  # more dead bits than this fraction of the bits: collapsed
BALANCED_BIT_RANGE = (0.1, 0.9)  # a bit is balanced when its mean over the folder is in here
MIN_REGRESSION_MARGIN = 0.02
QUALITY_OK, QUALITY_COLLAPSED, QUALITY_WORSE = "ok", "collapsed", "worse_than_start"
QUALITY_NO_GAIN = "no_gain"


def code_stats(codes: np.ndarray, bits: int, n_classes: int) -> dict:
    """Distinct codes, balanced-bit fraction and dead-bit count of packed codes (float
    descriptors are judged by their signs, as the binarised variant)."""
    if is_float_codes(codes):
        from hashview.encode import pack_codes
        codes = pack_codes(codes)
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    unpacked = np.unpackbits(codes, axis=1)[:, :bits].astype(np.float64)
    means = unpacked.mean(axis=0) if len(unpacked) else np.zeros(bits)
    low, high = BALANCED_BIT_RANGE
    return {"distinct": int(len(np.unique(codes, axis=0))), "n_images": int(len(codes)),
            "bits": int(bits), "n_classes": int(n_classes),
            "balanced_bits": round(float(((means >= low) & (means <= high)).mean()), 4),
            "dead_bits": int(((means == 0.0) | (means == 1.0)).sum())}


def is_collapsed(stats: dict) -> bool:
    return (stats["distinct"] < max(DISTINCT_FRACTION_MIN * stats["n_images"],
                                    stats["n_classes"])
            or stats["dead_bits"] > DEAD_BITS_FRACTION_MAX * stats["bits"])


def model_report(loaded, dataset, split, device="auto") -> dict:
    """Held-out scores and folder-wide code statistics of one model (a LoadedModel)."""
    from hashview.evaluation import encode_folder_split, score_splits

    bits = int(loaded.card.bits)
    codes = encode_folder_split(loaded, dataset.entries, device)
    scored = score_splits(codes, dataset, [split], bits, {"k_list": (10,)}, None)
    held_out = scored["splits"][0]
    return {"name": loaded.card.name, "bits": bits,
            **{k: round(float(held_out[k]), 4) for k in (VOTE_KEY, BALANCED_KEY, MAP_KEY)},
            "n_queries": int(held_out["n_queries"]), "n_database": int(held_out["n_database"]),
            "codes": code_stats(codes, bits, len(set(dataset.labels)))}


def regression_margin(start_vote: float, n_queries: int) -> float:
    """How far below the start's vote@10 counts as worse: its sampling error over the queries."""
    p = min(max(float(start_vote), 0.0), 1.0)
    return max(MIN_REGRESSION_MARGIN, math.sqrt(p * (1.0 - p) / max(1, n_queries)))


def verdict(trained: dict, start: Optional[dict]) -> tuple[str, list[str]]:
    """``quality`` and the reasons behind it (one short sentence each)."""
    reasons = []
    codes = trained["codes"]
    if is_collapsed(codes):
        reasons.append(f"{codes['distinct']} distinct codes over {codes['n_images']} images, "
                       f"{codes['dead_bits']} of {codes['bits']} bits dead")
        return QUALITY_COLLAPSED, reasons
    if start is not None:
        margin = regression_margin(start[VOTE_KEY], trained["n_queries"])
        if _below_by(trained, start, margin):
            reasons.append(f"held-out vote@10 {trained[VOTE_KEY]:.3f} against "
                           f"{start[VOTE_KEY]:.3f} for {start['name']} (margin {margin:.3f}, "
                           f"{trained['n_queries']} queries)")
            return QUALITY_WORSE, reasons
        if _no_better(trained, start):
            reasons.append(f"held-out vote@10 {trained[VOTE_KEY]:.3f} and mAP "
                           f"{trained[MAP_KEY]:.3f}, no better than {start[VOTE_KEY]:.3f} and "
                           f"{start[MAP_KEY]:.3f} for {start['name']} as it is: keep using "
                           f"{start['name']}")
            return QUALITY_NO_GAIN, reasons
    return QUALITY_OK, reasons


def _below_by(trained: dict, other: dict, margin: float) -> bool:
    """``trained``'s held-out vote@10 below ``other``'s by more than ``margin``."""
    return trained[VOTE_KEY] < other[VOTE_KEY] - margin


def _no_better(trained: dict, other: dict) -> bool:
    """Neither ``trained``'s held-out vote@10 nor its mAP above ``other``'s."""
    return trained[VOTE_KEY] <= other[VOTE_KEY] and trained[MAP_KEY] <= other[MAP_KEY]


def outdone_by(trained: dict, other: dict) -> bool:
    """Whether ``other`` retrieved better on the held-out part than ``trained``, by the rule
    that makes a start better in :func:`verdict` (worse_than_start or no_gain)."""
    margin = regression_margin(other[VOTE_KEY], trained["n_queries"])
    return _below_by(trained, other, margin) or _no_better(trained, other)


def _scores(scored: dict) -> dict:
    return {k: scored[k] for k in (VOTE_KEY, BALANCED_KEY, MAP_KEY)}


def build_report(trained: dict, start: Optional[dict], start_role: str, split,
                 bundled: Optional[dict] = None, bundled_skipped: Optional[str] = None) -> dict:
    """The report stored as the card's ``metrics`` (see the module notes for the verdict).
    ``bundled``: name -> model_report of other bundled models as they are on the same split;
    ``bundled_skipped``: why they were not compared."""
    quality, reasons = verdict(trained, start)
    held_out = {k: trained[k] for k in (VOTE_KEY, BALANCED_KEY, MAP_KEY, "n_queries",
                                        "n_database")}
    report = {"held_out": held_out, "codes": trained["codes"], "quality": quality,
              "reasons": reasons, "protocol": split.protocol, "split_seed": split.seed}
    if start is not None:
        report["start_model"] = {**start, "role": start_role}
    if bundled_skipped:
        report["bundled_models_skipped"] = bundled_skipped
    if bundled:
        report["bundled_models"] = {name: _scores(s) for name, s in sorted(bundled.items())}
        name, best = max(bundled.items(), key=lambda kv: (kv[1][VOTE_KEY], kv[1][MAP_KEY]))
        report["best_bundled"] = {"name": name, **_scores(best), "of": len(bundled)}
        if outdone_by(trained, best):
            report["bundled_better"] = name
    return report


def report_lines(report: dict, model_name: str) -> list[str]:
    """A short side-by-side table of the trained and the start model, then the verdict."""
    rows = [(model_name, report["held_out"], report["codes"])]
    start = report.get("start_model")
    if start:
        rows.append((f"{start['name']} ({start['role']})", start, start["codes"]))
    width = max(len(name) for name, _, _ in rows)
    lines = [f"held-out report ({report['held_out']['n_queries']} queries, database "
             f"{report['held_out']['n_database']} training patches):",
             f"  {'model':<{width}}  vote@10  balanced@10    mAP  distinct codes  "
             f"balanced bits  dead bits"]
    for name, scores, codes in rows:
        lines.append(f"  {name:<{width}}  {scores[VOTE_KEY]:7.3f}  {scores[BALANCED_KEY]:11.3f}"
                     f"  {scores[MAP_KEY]:5.3f}  {codes['distinct']:>6} / {codes['n_images']:<5}"
                     f"  {codes['balanced_bits']:13.2f}  {codes['dead_bits']:>9}")
    if report.get("method") == "head" and start:
        lines.append(f"  only the hash layer was refitted, on {start['name']}'s features of the "
                     "patches; the rest of the net is the start's")
    if "kept_epoch" in report:
        inner = report["inner_validation"]
        lines.append(f"  kept epoch {report['kept_epoch']} (0: the start as it is), validation "
                     f"mAP {inner['map']:.3f} on {inner['n_images']} training patches set aside")
    candidates = report.get("start_candidates")
    if candidates:
        lines.append("  start chosen by that validation mAP as is: " + ", ".join(
            f"{name} {score:.3f}" for name, score in sorted(candidates.items())))
    best = report.get("best_bundled")
    if best:
        lines.append(f"  best of {best['of']} other bundled models as they are, picked on these "
                     f"same queries: {best['name']} {best[VOTE_KEY]:.3f} / "
                     f"{best[BALANCED_KEY]:.3f} / {best[MAP_KEY]:.3f} (vote@10 / balanced@10 "
                     "/ mAP)")
    elif report.get("bundled_models_skipped"):
        lines.append(f"  bundled models not compared: {report['bundled_models_skipped']}")
    for name, reason in sorted((report.get("bundled_models_failed") or {}).items()):
        lines.append(f"  bundled model {name} could not be compared: {reason}")
    final = report.get("final_codes")
    if final:
        lines.append(f"  final model on all patches: {final['distinct']} distinct codes over "
                     f"{final['n_images']}, {final['dead_bits']} dead bits")
    return lines


def bundled_note(report: dict) -> Optional[str]:
    """What the user should know when a bundled model as it is retrieved better on the
    held-out part than the trained one; None otherwise."""
    name = report.get("bundled_better")
    if not name:
        return None
    best, held = report["best_bundled"], report["held_out"]
    return (f"bundled model {name} as it is scored higher on the held-out patches: vote@10 "
            f"{best[VOTE_KEY]:.3f} against {held[VOTE_KEY]:.3f}, mAP {best[MAP_KEY]:.3f} "
            f"against {held[MAP_KEY]:.3f} (the best of {best['of']}, picked on these same "
            f"patches, so read it as optimistic): consider indexing with {name}")


def is_note_only(report: dict) -> bool:
    """Whether the report's warning line is a NOTE (the model is usable, something did as well
    or better), not a WARNING (collapsed or worse than its start)."""
    return report["quality"] in (QUALITY_OK, QUALITY_NO_GAIN)


def warning_line(report: dict, model_name: str) -> Optional[str]:
    """One loud line for a collapsed, regressed or no better model, or one a bundled model
    outdid; None when it is ok."""
    quality, bundled = report["quality"], bundled_note(report)
    reasons = report["reasons"] + ([bundled] if bundled else [])
    if quality == QUALITY_OK:
        return f"NOTE: model {model_name}: {bundled}" if bundled else None
    if quality == QUALITY_NO_GAIN:
        return f"NOTE: model {model_name} is NO BETTER THAN ITS START: {'; '.join(reasons)}"
    what = "COLLAPSED" if quality == QUALITY_COLLAPSED else "WORSE THAN ITS START"
    return f"WARNING: model {model_name} {what}: {'; '.join(reasons)}"
