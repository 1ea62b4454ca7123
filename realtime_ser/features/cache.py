"""On-disk cache of feature arrays, keyed by content hash and feature settings.

Features are recomputed for every training run and every change of settings would otherwise
silently reuse stale arrays, so the path encodes both: ``root/kind/<settings_key>/<sha256>.npy``.
Writes go to a temporary file that is then renamed, so a crash or a parallel worker never
leaves a half-written ``.npy`` that a later run would load.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["FeatureCache", "default_cache_root"]

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def default_cache_root() -> Path:
    """``$REALTIME_SER_CACHE/features``, else ``~/.cache/realtime-ser/features``."""
    env = os.environ.get("REALTIME_SER_CACHE")
    if env:
        return Path(env) / "features"
    return Path.home() / ".cache" / "realtime-ser" / "features"


class FeatureCache:
    """Content-addressed ``.npy`` store under ``root``."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_root()

    def path(self, kind: str, content: bytes | str, settings_key: str) -> Path:
        """Where the array for this content and settings lives (whether or not it exists yet).

        ``kind`` and ``settings_key`` become folder names, so they must be plain names: a
        ``/`` or ``..`` would let a caller write outside the cache.
        """
        for label, value in (("kind", kind), ("settings_key", settings_key)):
            if not _SAFE.match(value):
                raise ValueError(f"{label} must be a plain name ([A-Za-z0-9._-]), got {value!r}")
        data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
        return self.root / kind / settings_key / f"{hashlib.sha256(data).hexdigest()}.npy"

    def load(self, kind: str, content: bytes | str, settings_key: str) -> np.ndarray | None:
        """The cached array, or None when there is none (or it cannot be read: a truncated file
        from an old crash, a foreign format; the cache is only an accelerator)."""
        path = self.path(kind, content, settings_key)
        if path.is_file():
            try:
                return np.load(path, allow_pickle=False)
            except (OSError, ValueError):
                pass
        return None

    def store(self, kind: str, content: bytes | str, settings_key: str, array: np.ndarray) -> None:
        """Store ``array`` atomically (a temporary file renamed into place)."""
        path = self.path(kind, content, settings_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npy")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, np.asarray(array), allow_pickle=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_or_compute(
        self, kind: str, content: bytes | str, settings_key: str, compute: Callable[[], np.ndarray]
    ) -> np.ndarray:
        """The cached array, or ``compute()``'s result after storing it atomically."""
        cached = self.load(kind, content, settings_key)
        if cached is not None:
            return cached
        array = np.asarray(compute())
        self.store(kind, content, settings_key, array)
        return array
