"""``hashview models | train | eval | explain``: the model sub-commands (see :mod:`hashview.cli`)."""

from __future__ import annotations

import json
from typing import Sequence

from hashview.cli.support import (EXIT_OK, EXIT_WORSE_MODEL, progress_bar, say, say_lines,
                                  say_problems, usage_error)

EXPLAIN_PANEL = 256  # side of each of the four panels of ``hashview explain --out``


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
    held = metrics.get("held_out")
    if not parts and isinstance(held, dict):  # a model trained on the user's own folder
        for key, name in (("vote_accuracy@10", "vote@10"), ("map", "mAP")):
            if isinstance(held.get(key), (int, float)):
                parts.append(f"held-out {name} {held[key]:.3f}")
        if parts and isinstance(held.get("n_queries"), int):
            parts.append(f"({held['n_queries']} queries)")
    general = metrics.get("generalisation")
    stain = general.get("kather_stain_vote@10_mean") if isinstance(general, dict) else None
    if isinstance(stain, (int, float)):  # benchmarks/generalisation.py --write-cards
        parts.append(f"other stains vote@10 {stain:.3f}")
    return "  ".join(parts)


def cmd_install_model(path: str, as_json: bool) -> int:
    from hashview.models import install_model
    from hashview.models.store import user_models_dir

    name = _stem_name(path)  # only its installed card is looked for, not every model's
    replaced = bool(name) and (user_models_dir() / f"{name}.json").is_file()
    card = install_model(path)
    if as_json:
        print(json.dumps({"installed": card.name, "replaced": replaced,
                          "warnings": card.warnings()}, indent=2))
        return EXIT_OK
    say(f"installed {card.name}{' (replacing the earlier one)' if replaced else ''}: "
        f"use it by name, e.g. hashview index ... --model {card.name}, or choose it in the app")
    for warning in card.warnings():  # installed as asked, but never silently
        say(f"WARNING: model {card.name}: {warning}", err=True)
    return EXIT_OK


def _stem_name(path: str) -> str:
    """The name the model at ``path`` will be installed under ("" when it cannot be told)."""
    from hashview.errors import HashViewError
    from hashview.models.store import unfold_model_path

    try:
        return unfold_model_path(path).with_suffix("").name
    except HashViewError:
        return ""  # install_model names the problem


def cmd_models(args) -> int:
    from hashview.code_kinds import code_kind
    from hashview.models import DEFAULT_MODEL, list_models

    if args.install:
        return cmd_install_model(args.install, args.json)
    cards = list_models()
    if args.json:
        print(json.dumps([c.to_dict() for c in cards], indent=2))
        return EXIT_OK
    width = max([12] + [len(card.name) for card in cards])
    for card in cards:
        default = "*" if card.name == DEFAULT_MODEL else " "
        status = "trained" if card.trained else "untrained"
        unit = code_kind(card.code_kind).unit
        flag = "".join(f"[{warning}] " for warning in card.warnings())
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


def _trainer(args, named: dict):
    """The training function for ``args.data`` (a patch folder, or annotated slides) with the
    arguments that depend on it added to ``named``; or a usage problem (a string)."""
    from hashview.cli.annotations import annotation_options, annotation_usage_problem

    if annotation_usage_problem(args):
        return annotation_usage_problem(args)
    if args.annotations is None:
        if len(args.data) > 1:
            return "give one patch folder (several slides need --annotations)"
        from hashview.training import train_from_folder

        named.update(data_folder=args.data[0], protocol=args.protocol or "hatdh")
        return train_from_folder
    from hashview.training.slide_run import train_from_annotated_slides

    if args.cases:
        from hashview.library.case_csv import patients_of, read_case_csv

        named["patients"] = patients_of(read_case_csv(args.cases))
    named.update(paths=args.data, protocol=args.protocol, annotations=annotation_options(args))
    return train_from_annotated_slides


def _say_annotated_tiles(tiles) -> None:
    from hashview.cli.annotations import label_summary

    say_problems(tiles.warnings, tiles.failed)
    say(f"trained on {tiles.tiles} annotated tiles of {len(tiles.slides)} slide(s); "
        f"{label_summary(tiles.labels)}")


def cmd_train(args) -> int:
    from hashview.training.report import is_note_only, report_lines, warning_line

    try:
        options = _parse_options(args.option)
    except ValueError as exc:
        return usage_error(str(exc))
    named = {"arch": args.arch, "bits": args.bits,
             "out_dir": args.out, "epochs": args.epochs, "batch_size": args.batch_size,
             "lr": args.lr, "seed": args.seed, "split_file": args.split,
             "resume": args.resume, "device": args.device,
             "from_scratch": args.from_scratch, "keep_held_out": args.keep_held_out,
             "progress": None}
    trainer = _trainer(args, named)
    if isinstance(trainer, str):
        return usage_error(trainer)
    if args.input_size is not None:
        named["input_size"] = args.input_size
    if args.init:
        named["init_from"] = args.init
    if args.whole_network:
        named["method"] = "network"
    clash = sorted(set(options) & set(named))
    if clash:
        return usage_error(f"--option cannot set {clash[0]!r}, which a named argument of "
                           "'hashview train' sets (see --help)")
    bar = progress_bar(not args.json)
    result = trainer(**{**named, **options, "progress": bar})
    bar.close()
    report = result.report
    warning = warning_line(report, result.card.name)
    summary = {"model": str(result.model_path), "seconds": round(result.seconds, 1),
               "final_loss": result.history[-1] if result.history else None,
               "quality": report.get("quality"), "report": report}
    tiles = getattr(result, "tiles", None)  # training from annotated slides
    if tiles is not None:
        summary["annotated_tiles"] = tiles.to_dict()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        if tiles is not None:
            _say_annotated_tiles(tiles)
        say_lines("\n".join(report_lines(report, result.card.name)))
        say(f"model written to {result.model_path} ({result.seconds:.0f} s); use it with "
            f"--model {args.out}, or by name after hashview models --install {args.out}")
    if warning and is_note_only(report):
        say(warning, err=True)  # not harmful, so no failure exit: the model works
    elif warning:
        say(warning if args.accept_worse else f"{warning} (exit {EXIT_WORSE_MODEL}; "
            "--accept-worse to accept it)", err=True)
        if not args.accept_worse:
            return EXIT_WORSE_MODEL
    return EXIT_OK


def _stain_targets(specs: Sequence[str]) -> dict:
    """``[NAME=]PATH`` options -> ``{name: path}``; the name defaults to the file's stem."""
    from pathlib import Path
    targets = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or "/" in name or Path(spec).exists():
            name, path = Path(spec.rpartition("@")[0] or spec).stem or spec, spec
        if name in targets:
            raise ValueError(f"two stain targets named {name!r} (name them: NAME=PATH)")
        targets[name] = path
    return targets


def _headline(mean: dict, std: dict) -> str:
    """mAP and vote@10 with their spread over splits and the number of queries behind them."""
    parts = [f"{label} {mean[key]:.3f} ± {std.get(key, 0.0):.3f}"
             for key, label in (("map", "mAP"), ("vote_accuracy@10", "vote@10"))
             if key in mean]
    return "  ".join(parts) + f"  (n={mean.get('n_queries', 0):.0f} queries/split)"


def _say_generalisation(result: dict, data: str) -> None:
    if result["kind"] == "cross-folder":
        db, q = result["database"], result["queries"]
        say(f"{result['name']} database {db['data_root']} ({db['n_images']} images, "
            f"{db['exposure']}), queries {q['data_root']} ({q['exposure']})")
        say(f"  cross-folder  {_headline(result['mean'], result['std'])}")
        dropped = ", ".join(f"{k} {v}" for k, v in result["dropped"].items()) or "none"
        say(f"  queries kept {q['n_kept']} of {q['n_images']}; dropped (class not in the "
            f"database): {dropped}")
        return
    in_set = result["in_set"]
    say(f"{result['name']} on {data} ({len(in_set['splits'])} split(s), "
        f"{result['split_source']}; {result['exposure']})")
    width = max([16] + [len(name) + 7 for name in result["targets"]])
    say(f"  {'in-set':<{width}} {_headline(in_set['mean'], in_set['std'])}")
    for name, target in result["targets"].items():
        restain = target["restain"]
        fallbacks = restain.get("reinhard_fallback", 0) + restain.get("unchanged", 0)
        say(f"  {'stain ' + name:<{width}} {_headline(target['mean'], target['std'])}")
        gap = "  ".join(f"{k} {v:+.3f}" for k, v in target["gap"].items())
        say(f"  {'':<{width}} gap (in-set minus this): {gap}; {result['method']} restain, "
            f"{fallbacks} of {sum(restain.values())} images fell back")


def _stain_normaliser(args):
    """The reference ``--normalise`` names, fitted (None without the option)."""
    from hashview.stain import fit_stain_target
    if not args.normalise:
        return None
    return fit_stain_target(args.normalise, args.normalise_method)


def _say_normalised(result: dict) -> None:
    note = result.get("stain_normalised")
    if note:
        say(f"  every image stain-normalised to {note['target']} ({note['method']}; "
            f"{note.get('no_tissue', 0)} bare glass left as is)")


def cmd_eval_generalisation(args) -> int:
    from hashview.generalisation import evaluate_cross_folder, evaluate_cross_stain
    from hashview.models import DEFAULT_MODEL

    if args.baseline:
        return usage_error("--stain-target and --queries evaluate a model, not --baseline")
    if args.stain_target and args.queries:
        return usage_error("use --stain-target or --queries, not both")
    try:
        targets = _stain_targets(args.stain_target)
    except ValueError as exc:
        return usage_error(str(exc))
    normaliser = _stain_normaliser(args)
    bar = progress_bar(not args.json)
    model = args.model or DEFAULT_MODEL
    if args.queries:
        result = evaluate_cross_folder(model, args.data, args.queries, device=args.device,
                                       progress=bar, stain_normaliser=normaliser)
    else:
        result = evaluate_cross_stain(model, args.data, targets, split=args.split,
                                      protocol=args.protocol, seeds=args.seeds,
                                      method=args.stain_method, device=args.device,
                                      progress=bar, stain_normaliser=normaliser)
    bar.close()
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return EXIT_OK
    for warning in result.get("warnings", []):
        say(f"warning: {warning}", err=True)
    _say_generalisation(result, args.data)
    _say_normalised(result)
    return EXIT_OK


def cmd_eval(args) -> int:
    from hashview.evaluation import evaluate_baseline, evaluate_model, plot_curves

    if args.stain_target or args.queries:
        return cmd_eval_generalisation(args)
    seeds = args.seeds
    if args.baseline and args.normalise:
        return usage_error("--normalise evaluates a model, not --baseline")
    normaliser = _stain_normaliser(args)
    bar = progress_bar(not args.json)
    if args.baseline:
        result = evaluate_baseline(args.baseline, args.data, bits=args.bits, split=args.split,
                                   protocol=args.protocol, seeds=seeds, progress=bar)
    else:
        from hashview.models import DEFAULT_MODEL

        result = evaluate_model(args.model or DEFAULT_MODEL, args.data, split=args.split,
                                protocol=args.protocol, seeds=seeds, device=args.device,
                                progress=bar, stain_normaliser=normaliser)
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
    _say_normalised(result)
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
