"""Shared fixtures: where the shared data is, schema validation, running the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from realtime_ser.events import schema

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("REALTIME_SER_SHARED_DATA", REPO.parent / "shared" / "data"))

_VALIDATOR = jsonschema.Draft202012Validator(schema())


def validate_event(event: dict[str, Any]) -> None:
    """Raise if ``event`` does not match events v1."""
    errors = sorted(_VALIDATOR.iter_errors(event), key=lambda e: list(e.path))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        raise AssertionError(f"event does not match the schema: {best.message}\n{json.dumps(event)[:2000]}")


def validate_stream(events: list[dict[str, Any]]) -> None:
    """Every event valid; one session; seq gapless from 0; started first, ended last."""
    assert events, "no events"
    for e in events:
        validate_event(e)
    assert len({e["session"] for e in events}) == 1
    assert [e["seq"] for e in events] == list(range(len(events))), "seq must be gapless from 0"
    assert events[0]["type"] == "session.started"
    assert events[-1]["type"] == "session.ended"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the shared data folder {SHARED_DATA} (absent here); CI has it")
    return SHARED_DATA


def ravdess_dir() -> Path:
    path = SHARED_DATA / "ravdess"
    if not (path / "manifest.csv").is_file():
        pytest.skip(f"needs RAVDESS in {path} (absent here); CI has it")
    return path


def run_cli(args: list[str], *, input: bytes | None = None, timeout: float = 120.0,
            cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    """``realtime-ser ARGS`` in a subprocess (the real entry point)."""
    return subprocess.run(
        [sys.executable, "-m", "realtime_ser", *args],
        input=input, capture_output=True, timeout=timeout, cwd=cwd or REPO,
    )


def parse_jsonl(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


def utterances(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "utterance"]


@pytest.fixture(scope="session")
def backends() -> dict[str, Any]:
    """Recognizer backends loaded once and shared by the server tests."""
    from realtime_ser.asr import create_backend
    from realtime_ser.config import PipelineConfig

    return {"pocketsphinx": create_backend(PipelineConfig().asr), "none": None}


def run_with_server(cfg: Any, backends: dict[str, Any], scenario: Any) -> Any:
    """Start the real server on loopback with ``cfg`` and ``backends``, run the async
    ``scenario(server)``, shut the server down, and return what the scenario returned."""
    import asyncio

    from realtime_ser.server import Server

    async def main() -> Any:
        server = Server(cfg, backends)
        await server.start()
        try:
            return await scenario(server)
        finally:
            await server.shutdown()

    return asyncio.run(main())
