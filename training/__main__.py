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

from training.data import CONVERTERS, ConversionError, ManifestError, convert, summarize


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


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_convert_parser]
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
    except (ManifestError, ConversionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
