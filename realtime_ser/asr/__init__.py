"""Speech recognition backends behind one protocol, chosen by name.

Backends are imported lazily so that, e.g., ``--asr none`` needs neither
pocketsphinx, vosk nor CTranslate2 to be importable.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from ..config import ASR_BACKENDS, AsrConfig
from ..errors import ConfigError
from .base import Alternative, RecognizerBackend, RecognizerOptions, StreamRecognizer, Transcript, Word

BACKENDS = ASR_BACKENDS

__all__ = ["BACKENDS", "Alternative", "RecognizerBackend", "RecognizerOptions", "StreamRecognizer", "Transcript",
           "Word", "close_backend", "create_backend", "resolve_auto"]

log = logging.getLogger(__name__)


def resolve_auto(config: AsrConfig) -> tuple[AsrConfig, str]:
    """Turn ``backend = "auto"`` into the recognizer that will run, and say which.

    ``auto`` is whisper when CTranslate2 is installed and its model is in
    place (``asr.whisper_model``, or the one ``realtime-ser models prepare
    whisper-base`` made), else pocketsphinx. Measured on RAVDESS and TESS
    (bench/results/asr_compare.md), whisper makes several times fewer word errors;
    pocketsphinx answers sooner and needs nothing installed. Returns the config
    with the chosen name and a one-line notice for the user; any other backend
    comes back unchanged with an empty notice. Checks files only: a model that is
    present but broken still fails when the backend loads it.
    """
    if config.backend != "auto":
        return config, ""
    from .whisper_backend import default_model_dir, model_available

    if model_available(config):
        where = config.whisper_model or str(default_model_dir())
        notice = f"recognizer: whisper ({where})"
        chosen = "whisper"
    else:
        notice = ("recognizer: pocketsphinx (bundled; many word errors on emotional speech). For accurate "
                  "transcripts: realtime-ser models prepare whisper-base")
        chosen = "pocketsphinx"
    log.info("asr.backend=auto: %s", notice)
    return replace(config, backend=chosen), notice


def create_backend(config: AsrConfig, in_process: bool | None = None) -> RecognizerBackend | None:
    """Load the backend named by ``config.backend``; ``None`` for ``none``.

    pocketsphinx holds the GIL while it decodes, so by default its streams run
    in worker processes (``asr.worker_processes``); vosk and whisper release the
    GIL and run in this process. ``auto`` is resolved with :func:`resolve_auto`
    (callers that report the backend's name should resolve it themselves first).
    Raises :class:`~realtime_ser.errors.ModelError` when the model cannot be
    loaded and :class:`~realtime_ser.errors.ConfigError` for an unknown name.
    """
    if config.backend == "auto":
        config, _ = resolve_auto(config)
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
    if config.backend == "whisper":
        from .whisper_backend import WhisperBackend

        return WhisperBackend(config)
    raise ConfigError(f"unknown ASR backend {config.backend!r}; use one of {', '.join(BACKENDS)}")


def close_backend(backend: RecognizerBackend | None, timeout: float = 2.0) -> bool:
    """Release a backend's threads and worker processes (those that have any); False when
    something of it was still running after ``timeout`` seconds (a decode that cannot be
    interrupted). A process must not exit while a native decoder thread still runs."""
    close = getattr(backend, "close", None)
    if close is None:
        return True
    try:
        result = close(timeout=timeout)
    except TypeError:  # a close() without a timeout
        result = close()
    return result is not False
