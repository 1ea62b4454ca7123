"""``python -m training COMMAND``: the trainer's command line.

Each command is a subparser made by an ``add_<command>_parser`` function that sets
``func`` (called with the parsed args, returns the exit status); to add one, write
such a function and list it in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from realtime_ser.errors import ModelError
from training.data import CONVERTERS, ConfigError, ConversionError, ManifestError, convert, summarize
from training.folds import FoldError


def _convert(args: argparse.Namespace) -> int:
    manifest = convert(args.corpus, args.src, args.out, labels=args.labels, calm=args.calm)
    info = summarize(manifest)
    print(f"wrote {manifest.path}: {info['utterances']} utterances ({info['labeled']} labeled), "
          f"{info['dialogues']} dialogues, {info['speakers']} speakers")
    print("labels: " + ", ".join(f"{lab} {n}" for lab, n in manifest.label_counts().items()))
    return 0


def add_convert_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert", help="convert a corpus into a manifest CSV",
        description="Convert a corpus into the trainer's manifest format (see training/data.py).",
    )
    p.add_argument("corpus", choices=sorted(CONVERTERS), help="which corpus / source layout")
    p.add_argument("--src", type=Path, default=None,
                   help="source folder (default: its folder in $REALTIME_SER_SHARED_DATA or ../shared/data)")
    p.add_argument("--out", type=Path, required=True, help="the manifest CSV to write")
    p.add_argument("--labels", choices=["4", "all"], default="4",
                   help="4: neutral, happy, sad, angry (others dropped or kept as unlabeled context turns); "
                        "all: the corpus's own labels")
    p.add_argument("--calm", default=None, metavar="LABEL",
                   help="RAVDESS: map 'calm' to LABEL (e.g. neutral); default: dropped in 4-class mode")
    p.set_defaults(func=_convert)


def _train(args: argparse.Namespace) -> int:
    import logging

    from training.train import export_final, load_config, run_experiment

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cfg = load_config(args.config, args.set)
    doc = None
    if not args.no_eval:
        doc = run_experiment(cfg, args.out)
        out = args.out or Path("runs") / cfg.name
        print((out / "summary.md").read_text())
        print(f"wrote {out}/metrics.json, summary.md, config.resolved.json")
    if args.export:
        metrics = None
        if doc is not None and len(doc["variants"]) == 1:
            v = doc["variants"][0]
            metrics = {"protocol": v["config"]["protocol"], "summary": v["summary"], "per_fold": v["per_fold"]}
        export_final(cfg, args.export, version=args.version, metrics=metrics)
        print(f"exported {args.export}/model.onnx and card.json")
    return 0


def add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="run a cross-validated experiment from a TOML config (and export)",
                              description="Train and evaluate every variant x fold x seed of a config; "
                                          "results go to runs/<name>/.")
    p.add_argument("--config", type=Path, required=True, help="TOML config (see configs/train/)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a setting (TOML value), e.g. --set model.causal=true; repeatable. "
                        "Setting a key the [grid] varies pins it (one variant fewer)")
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/<name>)")
    p.add_argument("--export", type=Path, default=None, metavar="DIR",
                   help="then train on all the data and export model.onnx + card.json into DIR: one model, "
                        "of the first seed of train.seeds, or with train.ensemble=N one model per seed of the "
                        "first N, averaged in one graph; train.val_fraction of the dialogues (of held-out speakers, "
                        "train.val_by) is kept out to choose the epoch and fit the confidence temperatures. "
                        "A config with a [grid] needs each grid key pinned with --set")
    p.add_argument("--version", default="", help="model version for the card (default: today's date)")
    p.add_argument("--no-eval", action="store_true", help="skip the cross-validation (export only)")
    p.set_defaults(func=_train)


def _evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate, format_report, write_report

    report = evaluate(args.model, args.manifest, args.predictions)
    print(format_report(report))
    m = report["model"]
    name = f"{m['name']}-{m['version']}-{m['sha256'][:8]}-{args.manifest.stem}.json"
    out = args.out or Path("runs") / "evaluate" / name
    write_report(report, out)
    print(f"wrote {out}")
    return 0


def add_evaluate_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("evaluate", help="score an exported model on a manifest",
                              description="Evaluate an exported model (model.onnx + card.json) on any manifest; "
                                          "prints the metrics and writes them as JSON.")
    p.add_argument("--model", type=Path, required=True, metavar="DIR", help="exported model directory")
    p.add_argument("--manifest", type=Path, required=True, metavar="CSV", help="manifest to evaluate on")
    p.add_argument("--out", type=Path, default=None,
                   help="metrics JSON (default runs/evaluate/<model name>-<version>-<sha256 of model.onnx, 8 "
                        "digits>-<manifest>.json, so two models of one config never overwrite each other)")
    p.add_argument("--predictions", type=Path, default=None, metavar="CSV", help="also write per-utterance scores")
    p.set_defaults(func=_evaluate)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_convert_parser, add_train_parser,
                                                                add_evaluate_parser]
"""The ``add_<command>_parser`` functions, in the order ``--help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training", description="Offline trainer for realtime_ser: corpora, manifests, folds."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ManifestError, ConversionError, FoldError, ConfigError, ModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
