"""Speech recognition backends behind one protocol, chosen by name.

Backends are imported lazily so that, e.g., ``--asr none`` needs neither
pocketsphinx nor vosk to be importable.
"""

from __future__ import annotations

from ..config import AsrConfig
from ..errors import ConfigError
from .base import RecognizerBackend, StreamRecognizer, Transcript, Word

BACKENDS = ("pocketsphinx", "vosk", "none")

__all__ = ["BACKENDS", "RecognizerBackend", "StreamRecognizer", "Transcript", "Word", "create_backend"]


def create_backend(config: AsrConfig, in_process: bool | None = None) -> RecognizerBackend | None:
    """Load the backend named by ``config.backend``; ``None`` for ``none``.

    pocketsphinx holds the GIL while it decodes, so by default its streams run
    in worker processes (``asr.worker_processes``); vosk releases the GIL and
    runs in this process. Raises :class:`~realtime_ser.errors.ModelError` when
    the model cannot be loaded and :class:`~realtime_ser.errors.ConfigError`
    for an unknown name.
    """
    if config.backend == "none":
        return None
    if in_process is None:
        in_process = not (config.worker_processes and config.backend == "pocketsphinx")
    if not in_process:
        from .process import ProcessBackend

        return ProcessBackend(config)
    if config.backend == "pocketsphinx":
        from .pocketsphinx_backend import PocketsphinxBackend

        return PocketsphinxBackend(config)
    if config.backend == "vosk":
        from .vosk_backend import VoskBackend

        return VoskBackend(config)
    raise ConfigError(f"unknown ASR backend {config.backend!r}; use one of {', '.join(BACKENDS)}")
