"""``realtime-ser models prepare``: build the local model cache once.

Some models ship as weights that the runtime cannot use directly (the text
encoder is exported to ONNX; the Whisper model is assembled from parts). Each
such model registers a *step* here. A step is idempotent: it checks what is
already in the cache, builds what is missing, verifies the result loads, and
returns the directory it prepared.

The cache lives in ``$REALTIME_SER_CACHE`` or ``~/.cache/realtime-ser``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError


def cache_dir() -> Path:
    """The model cache: ``$REALTIME_SER_CACHE``, else ``$XDG_CACHE_HOME/realtime-ser``,
    else ``~/.cache/realtime-ser``."""
    env = os.environ.get("REALTIME_SER_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "realtime-ser"


@dataclass(frozen=True)
class PrepareOptions:
    cache: Path
    force: bool = False
    """Rebuild even when the cache already holds a valid copy."""


@dataclass(frozen=True)
class Step:
    name: str
    help: str
    run: Callable[[PrepareOptions], Path]
    optional: bool = False
    """An optional step is skipped with a notice (not an error) when what it needs is not installed."""
    present: Callable[[Path], Path | None] | None = None
    """Given the cache, the directory this step prepared when it is there (cheap: no hashing
    of weights, nothing loaded), else None; for ``realtime-ser models list``."""


STEPS: dict[str, Step] = {}


def register(step: Step) -> None:
    STEPS[step.name] = step


def _load_steps() -> None:
    # Steps live beside the code that uses their output; importing registers them.
    from .features import text  # noqa: F401

    try:
        from .asr import whisper_backend  # noqa: F401
    except ImportError:  # pragma: no cover - the backend module is optional
        pass


class StepUnavailable(ModelError):
    """Raised by an optional step whose inputs are not installed."""


def run(names: list[str] | None = None, force: bool = False, out=sys.stderr) -> dict[str, Path | None]:
    """Run the named steps (all when ``names`` is empty) and return where each put its model."""
    _load_steps()
    if names:
        unknown = [n for n in names if n not in STEPS]
        if unknown:
            raise ModelError(f"unknown model(s) to prepare: {', '.join(unknown)}; known: {', '.join(sorted(STEPS))}")
        steps = [STEPS[n] for n in names]
    else:
        steps = list(STEPS.values())
    options = PrepareOptions(cache=cache_dir(), force=force)
    done: dict[str, Path | None] = {}
    for step in steps:
        try:
            path = step.run(options)
        except StepUnavailable as exc:
            if not step.optional or names:
                raise
            print(f"realtime-ser: {step.name}: skipped ({exc})", file=out)
            done[step.name] = None
            continue
        print(f"realtime-ser: {step.name}: ready in {path}", file=out)
        done[step.name] = path
    return done


@dataclass(frozen=True)
class ModelEntry:
    """One line of ``realtime-ser models list``."""

    name: str
    kind: str
    """``bundled`` (in the installed packages), ``prepare`` or ``download``."""
    path: Path | None
    """Where it is, when it is present."""
    description: str
    get: str
    """The command that makes it present ('' for bundled models)."""

    @property
    def present(self) -> bool:
        return self.path is not None


def inventory() -> list[ModelEntry]:
    """Every model the runtime knows: bundled, built by ``models prepare``, fetched by ``models
    download``; each with where it is, or how to get it."""
    from . import download
    from .emotion.service import PACKAGED

    _load_steps()
    cache = cache_dir()
    out: list[ModelEntry] = []
    for name in sorted(p.name for p in PACKAGED.iterdir() if (p / "card.json").is_file()):
        out.append(ModelEntry(f"emotion-{name}", "bundled", PACKAGED / name, "emotion model in the package", ""))
    try:
        import pocketsphinx

        ps: Path | None = Path(pocketsphinx.get_model_path()) / "en-us"
    except Exception:  # not installed, or an unexpected layout
        ps = None
    out.append(ModelEntry("pocketsphinx-en-us", "bundled", ps if ps is not None and ps.exists() else None,
                          "pocketsphinx's US English model, in its wheel", "pip install pocketsphinx"))
    for step in STEPS.values():
        where = step.present(cache) if step.present is not None else None
        out.append(ModelEntry(step.name, "prepare", where, step.help, f"realtime-ser models prepare {step.name}"))
    models = download.default_cache_dir()
    for spec in download.KNOWN_MODELS.values():
        target = models / spec.name
        where = target if download.is_installed(target, spec) else None
        out.append(ModelEntry(spec.name, "download", where, spec.description,
                              f"realtime-ser models download {spec.name}"))
    return out
