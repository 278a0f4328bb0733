"""``hashview models | train | eval | explain``: the model sub-commands (see :mod:`hashview.cli`)."""

from __future__ import annotations

import json
from typing import Sequence

from hashview.cli_support import (EXIT_OK, EXIT_WORSE_MODEL, progress_bar, say, say_lines,
                                  usage_error)

EXPLAIN_PANEL = 256  # side of each of the four panels of ``hashview explain --out``
# How `hashview models` marks a model whose held-out report failed (card "quality").
QUALITY_FLAGS = {"collapsed": "[COLLAPSED] ", "worse_than_start": "[WORSE THAN ITS START] "}


def _metrics_summary(metrics: dict) -> str:
    """mAP and vote accuracy from a card, mean ± std over its splits when it has several."""
    mean, std = metrics.get("splits_mean") or {}, metrics.get("splits_std") or {}
    parts = []
    for key, name in (("map", "mAP"), ("vote_accuracy@10", "vote@10"),
                      ("balanced_accuracy@10", "balanced@10")):
        if isinstance(mean.get(key), (int, float)):
            spread = f" ± {std[key]:.3f}" if isinstance(std.get(key), (int, float)) else ""
            parts.append(f"{name} {mean[key]:.3f}{spread}")
    if parts:
        seeds = metrics.get("split_seeds") or []
        parts.append(f"({metrics.get('protocol', '?')} protocol, {len(seeds)} split(s))")
    return "  ".join(parts)


def cmd_models(args) -> int:
    from hashview.models import DEFAULT_MODEL, list_models

    cards = list_models()
    if args.json:
        print(json.dumps([c.to_dict() for c in cards], indent=2))
        return EXIT_OK
    width = max([12] + [len(card.name) for card in cards])
    for card in cards:
        default = "*" if card.name == DEFAULT_MODEL else " "
        status = "trained" if card.trained else "untrained"
        unit = "dims" if card.code_kind == "float" else "bits"  # float descriptors
        flag = QUALITY_FLAGS.get(card.quality, "")
        say(f"{default} {card.name:<{width}} {card.arch:<6} {card.bits:>4} {unit}  {status:<9}"
            f"  {flag}{_metrics_summary(card.metrics or {})}")
    say("* default model")
    return EXIT_OK


def _parse_options(pairs: Sequence[str]) -> dict:
    """``KEY=VALUE`` pairs; values parsed as JSON when they can be (numbers, booleans)."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--option must be KEY=VALUE, got {pair!r}")
        try:
            options[key.replace("-", "_")] = json.loads(value)
        except (json.JSONDecodeError, RecursionError):  # plain text (or absurdly nested)
            options[key.replace("-", "_")] = value
    return options


def cmd_train(args) -> int:
    from hashview.training import train_from_folder
    from hashview.training.report import report_lines, warning_line

    try:
        options = _parse_options(args.option)
    except ValueError as exc:
        return usage_error(str(exc))
    named = {"data_folder": args.data, "arch": args.arch, "bits": args.bits,
             "out_dir": args.out, "epochs": args.epochs, "batch_size": args.batch_size,
             "lr": args.lr, "seed": args.seed, "split_file": args.split,
             "protocol": args.protocol, "resume": args.resume, "device": args.device,
             "from_scratch": args.from_scratch, "keep_held_out": args.keep_held_out,
             "progress": None}
    if args.input_size is not None:
        named["input_size"] = args.input_size
    if args.init:
        named["init_from"] = args.init
    clash = sorted(set(options) & set(named))
    if clash:
        return usage_error(f"--option cannot set {clash[0]!r}, which a named argument of "
                           "'hashview train' sets (see --help)")
    bar = progress_bar(not args.json)
    result = train_from_folder(**{**named, **options, "progress": bar})
    bar.close()
    report = result.report
    warning = warning_line(report, result.card.name)
    summary = {"model": str(result.model_path), "seconds": round(result.seconds, 1),
               "final_loss": result.history[-1] if result.history else None,
               "quality": report.get("quality"), "report": report}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        say_lines("\n".join(report_lines(report, result.card.name)))
        say(f"model written to {result.model_path} ({result.seconds:.0f} s)")
    if warning:
        say(warning if args.accept_worse else f"{warning} (exit {EXIT_WORSE_MODEL}; "
            "--accept-worse to accept it)", err=True)
        if not args.accept_worse:
            return EXIT_WORSE_MODEL
    return EXIT_OK


def cmd_eval(args) -> int:
    from hashview.evaluation import evaluate_baseline, evaluate_model, plot_curves

    seeds = args.seeds
    bar = progress_bar(not args.json)
    if args.baseline:
        result = evaluate_baseline(args.baseline, args.data, bits=args.bits, split=args.split,
                                   protocol=args.protocol, seeds=seeds, progress=bar)
    else:
        from hashview.models import DEFAULT_MODEL

        result = evaluate_model(args.model or DEFAULT_MODEL, args.data, split=args.split,
                                protocol=args.protocol, seeds=seeds, device=args.device,
                                progress=bar)
    bar.close()
    if args.plot:
        plot_curves(result, args.plot)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return EXIT_OK
    for warning in result.get("warnings", []):
        say(f"warning: {warning}", err=True)
    mean, std = result["mean"], result["std"]
    n = len(result.get("splits", [])) or 1
    say(f"{result.get('name') or args.baseline} on {args.data} ({n} split(s), "
        f"{result.get('split_source', args.protocol)})")
    for key in sorted(mean):
        if isinstance(mean[key], (int, float)):
            say(f"  {key:<28} {mean[key]:.4f} ± {std.get(key, 0.0):.4f}")
    return EXIT_OK


def cmd_explain(args) -> int:
    from hashview.errors import SourceError
    from hashview.explain import explain_pair, load_input, side_by_side
    from hashview.models import DEFAULT_MODEL, load_model

    model = load_model(args.model or DEFAULT_MODEL)
    query = load_input(args.query, model.card)
    hit = load_input(args.hit, model.card)
    result = explain_pair(model, query, hit, method=args.method, device="cpu")
    stats = result.stats
    distance = (f"hamming {stats['hamming']}/{stats['bits']}" if stats["hamming"] is not None
                else f"cosine distance {stats['distance']:.3f}")
    caption = (f"{model.card.name}  {args.method}  similarity {result.similarity:+.3f}  "
               f"{distance}")
    figure = side_by_side(query, hit, result, opacity=args.opacity, panel=EXPLAIN_PANEL,
                          caption=caption)
    try:
        figure.save(args.out, format="PNG")
    except (OSError, ValueError) as exc:
        raise SourceError(args.out, f"cannot write the figure ({exc})") from exc
    summary = {"query": args.query, "hit": args.hit, "model": model.card.name,
               "method": args.method, "similarity": result.similarity,
               "similarity_reverse": stats["similarity_ba"], "hamming": stats["hamming"],
               "distance": stats["distance"],
               "bits": stats["bits"], "query_map": stats["map_a"], "hit_map": stats["map_b"],
               "query_map_empty": stats["a_empty"], "hit_map_empty": stats["b_empty"],
               "out": str(args.out)}
    if args.json:
        print(json.dumps(summary, indent=2))
        return EXIT_OK
    say(f"{caption}  -> {args.out}")
    for name, key in (("query", "query_map"), ("hit", "hit_map")):
        s = summary[key]
        com = s["centre_of_mass"]
        where = "none (empty map)" if com is None else f"({com[0]:.2f}, {com[1]:.2f})"
        say(f"  {name:<5} map: mean {s['mean']:.3f}  max {s['max']:.3f}  "
            f"above 0.5 {s['frac_above_0_5']:.1%}  centre of mass {where}")
    return EXIT_OK
