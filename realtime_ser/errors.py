"""The exception hierarchy of realtime-ser.

Every error the package raises on purpose is a :class:`RealtimeSerError`; its
message says what was wrong and, where it applies, what is allowed. The CLI
prints that message and exits non-zero without a traceback.
"""

from __future__ import annotations


class RealtimeSerError(Exception):
    """Base class of every error raised on purpose by realtime-ser."""


class ConfigError(RealtimeSerError, ValueError):
    """A configuration file, key or value is not valid."""


class InputError(RealtimeSerError):
    """An audio input cannot be opened or decoded."""


class DeviceError(InputError):
    """No usable audio input device (microphone) exists."""


class ModelError(RealtimeSerError):
    """A model (recognizer, emotion model) is missing, corrupt or does not match."""


class DownloadError(RealtimeSerError):
    """A model download failed: unreachable host, bad checksum, bad archive."""


class RecognizerError(RealtimeSerError):
    """A speech recognizer failed while decoding."""
