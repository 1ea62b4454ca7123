"""Tests of realtime_ser.download against a local HTTP server; no real network is used."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import socket
import tarfile
import threading
import urllib.parse
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from realtime_ser import download
from realtime_ser.download import (
    KNOWN_MODELS,
    MARKER_NAME,
    ModelSpec,
    add_arguments,
    default_cache_dir,
    download_model,
    run,
)
from realtime_ser.errors import DownloadError

MODEL_FILES = {
    "vosk-model-test/am/final.mdl": b"acoustic model bytes " * 64,
    "vosk-model-test/conf/model.conf": b"--sample-frequency=16000\n",
    "vosk-model-test/README": b"a fake model for tests\n",
}


def make_zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def make_tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FileServer:
    """A local HTTP server in a thread; serves ``files`` (path -> bytes), 404 otherwise."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        files, requests = self.files, self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
                requests.append(self.path)
                data = files.get(urllib.parse.urlsplit(self.path).path)
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()
        self._running = True
        self.base = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def serve(self, path: str, data: bytes) -> str:
        """Serve ``data`` at ``path``; return its URL."""
        self.files[path] = data
        return self.base + path

    def stop(self) -> None:
        if self._running:
            self._running = False
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)


@pytest.fixture
def server() -> Iterator[FileServer]:
    srv = FileServer()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def model_zip() -> bytes:
    return make_zip(MODEL_FILES)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def free_port() -> int:
    """A port on 127.0.0.1 that nobody listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


# ----------------------------------------------------------------- downloading


def test_download_verifies_and_installs_the_model(server: FileServer, cache: Path, model_zip: bytes) -> None:
    url = server.serve("/vosk-model-test.zip", model_zip)
    calls: list[tuple[int, int | None]] = []

    path = download_model(
        "vosk-model-test",
        cache,
        url=url,
        sha256=sha256_of(model_zip),
        progress=lambda done, total: calls.append((done, total)),
    )

    assert path == cache / "vosk-model-test"
    assert (path / "am" / "final.mdl").read_bytes() == MODEL_FILES["vosk-model-test/am/final.mdl"]
    assert (path / "conf" / "model.conf").is_file()
    marker = json.loads((path / MARKER_NAME).read_text())
    assert marker["sha256"] == sha256_of(model_zip)
    assert marker["url"] == url
    assert leftovers(cache) == ["vosk-model-test"], "no staging files remain"
    assert calls and calls[-1] == (len(model_zip), len(model_zip))


def test_second_call_is_served_from_the_cache(server: FileServer, cache: Path, model_zip: bytes) -> None:
    url = server.serve("/m.zip", model_zip)
    first = download_model("vosk-model-test", cache, url=url, sha256=sha256_of(model_zip))
    server.stop()  # any network access would now fail

    again = download_model("vosk-model-test", cache, url=url, sha256=sha256_of(model_zip))

    assert again == first
    assert server.requests == ["/m.zip"]


def test_known_model_is_resolved_by_name_and_then_cached(
    server: FileServer, cache: Path, model_zip: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = server.serve("/known.zip", model_zip)
    spec = ModelSpec("vosk-model-test-0.1", url, sha256_of(model_zip), len(model_zip), "test model")
    monkeypatch.setitem(KNOWN_MODELS, spec.name, spec)

    path = download_model(spec.name, cache)
    server.stop()

    assert download_model(spec.name, cache) == path
    assert (path / "am" / "final.mdl").is_file()


def test_tar_gz_archives_are_accepted(server: FileServer, cache: Path) -> None:
    archive = make_tar_gz(MODEL_FILES)
    url = server.serve("/m.tar.gz", archive)

    path = download_model("vosk-model-test", cache, url=url, sha256=sha256_of(archive))

    assert (path / "conf" / "model.conf").read_bytes() == MODEL_FILES["vosk-model-test/conf/model.conf"]
    assert (path / MARKER_NAME).is_file()


def test_archive_without_a_single_top_directory_is_the_model_directory(
    server: FileServer, cache: Path
) -> None:
    archive = make_zip({"am/final.mdl": b"x", "conf/model.conf": b"y"})
    url = server.serve("/flat.zip", archive)

    path = download_model("flat-model", cache, url=url, sha256=sha256_of(archive))

    assert path == cache / "flat-model"
    assert (path / "am" / "final.mdl").is_file()


def test_incomplete_directory_in_the_cache_is_replaced(
    server: FileServer, cache: Path, model_zip: bytes
) -> None:
    stale = cache / "vosk-model-test"
    stale.mkdir(parents=True)
    (stale / "half-written").write_bytes(b"junk")  # no marker: an interrupted copy
    url = server.serve("/m.zip", model_zip)

    path = download_model("vosk-model-test", cache, url=url, sha256=sha256_of(model_zip))

    assert not (path / "half-written").exists()
    assert (path / MARKER_NAME).is_file()
    assert leftovers(cache) == ["vosk-model-test"]


# ---------------------------------------------------------------------- failures


def test_checksum_mismatch_names_both_digests_and_leaves_nothing(
    server: FileServer, cache: Path, model_zip: bytes
) -> None:
    url = server.serve("/m.zip", model_zip)
    wrong = "0" * 64

    with pytest.raises(DownloadError) as caught:
        download_model("vosk-model-test", cache, url=url, sha256=wrong)

    message = str(caught.value)
    assert url in message
    assert wrong in message
    assert sha256_of(model_zip) in message
    assert leftovers(cache) == []


def test_known_model_from_a_mirror_still_checks_the_pinned_checksum(
    server: FileServer, cache: Path, model_zip: bytes
) -> None:
    url = server.serve("/mirror.zip", model_zip)
    pinned = KNOWN_MODELS["vosk-model-small-en-us-0.15"].sha256

    with pytest.raises(DownloadError, match=pinned):
        download_model("vosk-model-small-en-us-0.15", cache, url=url)
    assert leftovers(cache) == []


def test_connection_refused_is_a_clear_error(cache: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/m.zip"

    with pytest.raises(DownloadError) as caught:
        download_model("vosk-model-test", cache, url=url, sha256="a" * 64, timeout=5)

    message = str(caught.value)
    assert message.startswith(f"cannot reach {url}: ")
    assert "refused" in message.lower()
    assert "--vosk-model DIR" in message
    assert leftovers(cache) == []


def test_silent_server_times_out(cache: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # accepts the connection in the backlog, never answers
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/m.zip"

        with pytest.raises(DownloadError, match=r"cannot reach .*timed out after 0\.3 s"):
            download_model("vosk-model-test", cache, url=url, sha256="a" * 64, timeout=0.3)
    assert leftovers(cache) == []


def test_http_404_is_a_clear_error(server: FileServer, cache: Path) -> None:
    url = server.base + "/missing.zip"

    with pytest.raises(DownloadError, match=r"HTTP 404") as caught:
        download_model("vosk-model-test", cache, url=url, sha256="a" * 64)

    assert url in str(caught.value)
    assert leftovers(cache) == []


def test_corrupt_archive_is_rejected(server: FileServer, cache: Path) -> None:
    junk = b"<html>this is not an archive</html>" * 10
    url = server.serve("/m.zip", junk)

    with pytest.raises(DownloadError, match="neither a zip nor a tar.gz"):
        download_model("vosk-model-test", cache, url=url, sha256=sha256_of(junk))
    assert leftovers(cache) == []


def test_truncated_zip_is_rejected(server: FileServer, cache: Path, model_zip: bytes) -> None:
    broken = bytearray(model_zip)
    broken[40:200] = bytes(160)  # damage the compressed data, keep the directory
    url = server.serve("/m.zip", bytes(broken))

    with pytest.raises(DownloadError, match="corrupt"):
        download_model("vosk-model-test", cache, url=url, sha256=sha256_of(bytes(broken)))
    assert leftovers(cache) == []


@pytest.mark.parametrize(
    "evil",
    ["../evil.txt", "vosk-model-test/../../evil.txt", "/tmp/evil.txt", "C:/evil.txt", "..\\evil.txt"],
)
def test_zip_slip_members_are_rejected(server: FileServer, cache: Path, evil: str) -> None:
    archive = make_zip({**MODEL_FILES, evil: b"pwned"})
    url = server.serve("/evil.zip", archive)

    with pytest.raises(DownloadError, match="unsafe archive") as caught:
        download_model("vosk-model-test", cache, url=url, sha256=sha256_of(archive))

    assert evil in str(caught.value) or repr(evil) in str(caught.value)
    assert leftovers(cache) == []
    assert not (cache.parent / "evil.txt").exists()


def test_tar_links_are_rejected(server: FileServer, cache: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        link = tarfile.TarInfo("vosk-model-test/passwd")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tf.addfile(link)
    archive = buffer.getvalue()
    url = server.serve("/link.tar.gz", archive)

    with pytest.raises(DownloadError, match="link or special file"):
        download_model("vosk-model-test", cache, url=url, sha256=sha256_of(archive))
    assert leftovers(cache) == []


def test_unknown_name_lists_the_known_models(cache: Path) -> None:
    with pytest.raises(DownloadError) as caught:
        download_model("vosk-model-nonexistent", cache)

    message = str(caught.value)
    assert "vosk-model-nonexistent" in message
    for name in KNOWN_MODELS:
        assert name in message
    assert not cache.exists()


@pytest.mark.parametrize(
    ("name", "url", "sha256", "pattern"),
    [
        ("custom", "http://127.0.0.1:9/m.zip", None, "needs --sha256"),
        ("custom", None, "a" * 64, "without --url"),
        ("custom", "http://127.0.0.1:9/m.zip", "xyz", "64 hexadecimal"),
        ("custom", "ftp://example.invalid/m.zip", "a" * 64, "unsupported URL"),
        ("../escape", "http://127.0.0.1:9/m.zip", "a" * 64, "invalid model name"),
    ],
)
def test_bad_arguments_are_rejected_before_any_network_use(
    cache: Path, name: str, url: str | None, sha256: str | None, pattern: str
) -> None:
    with pytest.raises(DownloadError, match=pattern):
        download_model(name, cache, url=url, sha256=sha256)
    assert not cache.exists()


# ------------------------------------------------------------------- the registry


def test_known_models_are_pinned_official_https_archives() -> None:
    assert "vosk-model-small-en-us-0.15" in KNOWN_MODELS
    assert "vosk-model-en-us-0.22-lgraph" in KNOWN_MODELS
    for key, spec in KNOWN_MODELS.items():
        assert spec.name == key
        assert re.fullmatch(r"[0-9a-f]{64}", spec.sha256), spec.name
        assert spec.url.startswith("https://"), spec.name
        assert spec.url == f"https://alphacephei.com/vosk/models/{spec.name}.zip"
        assert spec.size is None or spec.size > 0
        assert spec.description
    assert len({spec.sha256 for spec in KNOWN_MODELS.values()}) == len(KNOWN_MODELS)


def test_default_cache_dir_honours_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("REALTIME_SER_CACHE", str(tmp_path / "own"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "own" / "models"

    monkeypatch.delenv("REALTIME_SER_CACHE")
    assert default_cache_dir() == tmp_path / "xdg" / "realtime-ser" / "models"

    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "realtime-ser" / "models"


# ------------------------------------------------------------------------ the CLI


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="realtime-ser models download")
    add_arguments(parser)
    return parser.parse_args(argv)


def test_run_prints_the_model_directory_alone(
    server: FileServer, cache: Path, model_zip: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    url = server.serve("/m.zip", model_zip)
    args = parse(
        ["vosk-model-test", "--cache-dir", str(cache), "--url", url, "--sha256", sha256_of(model_zip)]
    )

    assert run(args) == 0

    out, err = capsys.readouterr()
    assert out == f"{cache / 'vosk-model-test'}\n"
    assert err == ""  # stderr is not a terminal here: no progress line


def test_run_lets_download_errors_propagate(cache: Path) -> None:
    with pytest.raises(DownloadError, match="unknown model"):
        run(parse(["no-such-model", "--cache-dir", str(cache)]))
    with pytest.raises(DownloadError, match="--list"):
        run(parse(["--cache-dir", str(cache)]))


def test_run_list_prints_the_known_models(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(parse(["--list"])) == 0

    out = capsys.readouterr().out
    for name in KNOWN_MODELS:
        assert name in out


def test_progress_line_draws_percentages() -> None:
    stream = io.StringIO()
    meter = download._ProgressLine("m", stream)
    meter(50, 200)
    meter(51, 200)  # same percentage: not redrawn
    meter(200, 200)
    meter.close()

    assert stream.getvalue() == "\rdownloading m: 25% of 0.0 MB\rdownloading m: 100% of 0.0 MB\n"
