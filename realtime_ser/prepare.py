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
