"""A short soak through the real server (``make soak`` runs the long one): two sessions, subscribers
coming and going, every utterance exactly once and in order, no memory, thread or descriptor growth."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, SHARED_DATA


@pytest.mark.slow
def test_short_soak_passes_every_check(tmp_path: Path) -> None:
    if not all((SHARED_DATA / c / "manifest.csv").is_file() for c in ("ravdess", "tess")):
        pytest.skip(f"needs RAVDESS and TESS in {SHARED_DATA} (absent here); CI has them")
    proc = subprocess.run([sys.executable, "-m", "bench.soak", "--sessions", "2", "--seconds", "60", "--speed", "4",
                           "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600)
    result = json.loads((tmp_path / "soak.json").read_text())
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert result["passed"] and result["reference_utterances"] >= 10
    assert result["checks"]["flaky_subscriber_equals_steady"]["flaky_connections"] > 4
