"""Fetch official Vosk model archives into the user's cache.

``realtime-ser models download NAME`` streams a model archive over HTTP(S),
checks it against a pinned SHA-256, unpacks it safely into the cache and
prints the model directory to pass as ``--vosk-model DIR``.

Layout of the cache (see :func:`default_cache_dir`)::

    <cache_dir>/<name>/                     the model directory (am/, conf/, ...)
    <cache_dir>/<name>/.realtime-ser-complete   marker: written after a verified extraction
    <cache_dir>/.<name>-XXXX.tmp/           staging while downloading; removed on exit

A model directory appears in the cache only by an atomic rename of a fully
verified and extracted staging directory, so a crash or an error never leaves
a half-written model behind, and a directory that carries the marker (with the
expected checksum) is served without touching the network.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import socket
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TextIO

from realtime_ser import __version__
from realtime_ser.errors import DownloadError

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int | None], None]

#: Name of the marker file written into a model directory after a verified extraction.
MARKER_NAME = ".realtime-ser-complete"

_CHUNK_SIZE = 1 << 20  # 1 MiB per read: the archive is never held whole in memory
_MODELS_PAGE = "https://alphacephei.com/vosk/models"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_MANUAL_HINT = "download the archive yourself and pass --vosk-model DIR"


@dataclass(frozen=True)
class ModelSpec:
    """An archive that can be downloaded: where it lives and what it must hash to."""

    name: str
    url: str
    sha256: str
    size: int | None
    description: str


def _official(name: str, sha256: str, size: int | None, description: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        url=f"https://alphacephei.com/vosk/models/{name}.zip",
        sha256=sha256,
        size=size,
        description=description,
    )


# Official models from https://alphacephei.com/vosk/models. Alpha Cephei publishes
# no checksums, so each SHA-256 below is the value pinned for the same archive by
# a public package recipe (named next to each entry) and, where noted, matched by
# other independent projects. Sizes are archive bytes as recorded next to those
# checksums (None where no public source gave one); they are shown by --list and
# used for progress when the server sends no Content-Length, never to validate.
KNOWN_MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        # sha256: Yocto recipes kercre123/wirepod-pi-yocto
        # meta-wirepod/recipes-vosk/vosk-model/vosk-model-small-en-us_0.15.bb and
        # agl-ic-eg/meta-agl-devel meta-offline-voice-agent/recipes-vosk/vosk-model/
        # vosk-model-small-en-us_0.15.bb; Arch AUR PKGBUILD vosk-api-git.
        _official(
            "vosk-model-small-en-us-0.15",
            "30f26242c4eb449f948e42cb302dd7a686cb29a3423a8367f99ff41780942498",
            41_205_931,
            "US English, small (40 MB): fast, modest accuracy; the default choice",
        ),
        # sha256: Arch AUR PKGBUILD vosk-model-en-us-lgraph 0.22 (maintainer goelzma);
        # the same value and size are pinned by several independent projects.
        _official(
            "vosk-model-en-us-0.22-lgraph",
            "d9838b4aaa82a75c4a17f5aca300eaca129aaab2a7cbf951bafbb500eb9c4334",
            130_557_655,
            "US English, dynamic graph (128 MB): more accurate than the small model",
        ),
        # sha256: Yocto recipe kercre123/wirepod-pi-yocto
        # meta-wirepod/recipes-vosk/vosk-model/vosk-model-en-us_0.22.bb;
        # Arch AUR PKGBUILD vosk-model-en-us 0.22 (maintainer goelzma).
        _official(
            "vosk-model-en-us-0.22",
            "47f9a81ebb039dbb0bd319175c36ac393c0893b796c2b6303e64cf58c27b69f6",
            None,
            "US English, big static graph (1.8 GB): most accurate, server-class memory use",
        ),
        # sha256: Yocto recipe kercre123/wirepod-pi-yocto
        # meta-wirepod/recipes-vosk/vosk-model/vosk-model-small-en-in_0.4.bb.
        _official(
            "vosk-model-small-en-in-0.4",
            "20663dcac4d5cb783a579c54d98339344a688e4ec6e1b4a4b059fd1235454cc7",
            None,
            "Indian English, small (36 MB)",
        ),
        # sha256: Yocto recipe kercre123/wirepod-pi-yocto
        # meta-wirepod/recipes-vosk/vosk-model/vosk-model-small-de_0.15.bb.
        _official(
            "vosk-model-small-de-0.15",
            "b7e53c90b1f0a38456f4cd62b366ecd58803cd97cd42b06438e2c131713d5e43",
            None,
            "German, small (45 MB)",
        ),
        # sha256: Yocto recipe kercre123/wirepod-pi-yocto
        # meta-wirepod/recipes-vosk/vosk-model/vosk-model-small-fr_0.22.bb.
        _official(
            "vosk-model-small-fr-0.22",
            "cabf6180e177eb9b3a9a9d43a437bd5e549f3a7d09525e5d69a3fed787be12ad",
            None,
            "French, small (41 MB)",
        ),
        # sha256: Yocto recipe kercre123/wirepod-pi-yocto
        # meta-wirepod/recipes-vosk/vosk-model/vosk-model-small-it_0.22.bb.
        _official(
            "vosk-model-small-it-0.22",
            "9ec65e75861d1c6c2e457cccd932705340dcdf233f5b239f00733b4de0bf3267",
            None,
            "Italian, small (48 MB)",
        ),
        # sha256: Yocto recipe kercre123/wirepod-pi-yocto
        # meta-wirepod/recipes-vosk/vosk-model/vosk-model-small-ja_0.22.bb.
        _official(
            "vosk-model-small-ja-0.22",
            "efa092d280153a77615e9e0c7d7283e93e600de3d19d3bec686c57ef19d52eac",
            49_704_573,
            "Japanese, small (48 MB)",
        ),
    )
}


def default_cache_dir() -> Path:
    """Where downloaded models live.

    ``$REALTIME_SER_CACHE/models`` if that is set, else
    ``$XDG_CACHE_HOME/realtime-ser/models``, else ``~/.cache/realtime-ser/models``.
    """
    own = os.environ.get("REALTIME_SER_CACHE")
    if own:
        return Path(own).expanduser() / "models"
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "realtime-ser" / "models"
    return Path.home() / ".cache" / "realtime-ser" / "models"


def download_model(
    name: str,
    cache_dir: Path | None = None,
    *,
    url: str | None = None,
    sha256: str | None = None,
    timeout: float = 30.0,
    progress: ProgressCallback | None = None,
) -> Path:
    """Make model ``name`` available in ``cache_dir`` and return its directory.

    ``name`` is looked up in :data:`KNOWN_MODELS` unless both ``url`` and
    ``sha256`` are given, which describes a custom model. ``url`` alone, for a
    known name, fetches the same archive from a mirror and still checks the
    pinned checksum. A complete cached copy is returned without network access.

    ``progress`` is called as ``progress(bytes_done, bytes_total_or_None)``
    while the archive streams in.

    Raises:
        DownloadError: unknown name, bad arguments, unreachable host, HTTP
            error, checksum mismatch, unsafe or corrupt archive, or a cache
            directory that cannot be written. Nothing partial is left behind.
    """
    spec = _resolve(name, url, sha256)
    cache_dir = (Path(cache_dir) if cache_dir is not None else default_cache_dir()).expanduser().absolute()
    target = cache_dir / spec.name

    if _is_complete(target, spec.sha256):
        logger.info("model %s is already in the cache: %s", spec.name, target)
        return target

    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", suffix=".tmp", dir=cache_dir))
    except OSError as exc:
        raise DownloadError(
            f"cannot create the model cache directory {cache_dir}: {_os_reason(exc)}; "
            "pass --cache-dir DIR or set REALTIME_SER_CACHE to a writable directory"
        ) from exc

    try:
        archive = staging / "archive"
        logger.info("downloading %s from %s", spec.name, spec.url)
        received = _fetch(spec, archive, timeout=timeout, progress=progress)
        logger.info("verified %s (%d bytes, sha256 %s)", spec.name, received, spec.sha256)

        model_root = _extract(archive, staging / "extract", spec.url)
        archive.unlink()
        _write_marker(model_root, spec, received)
        return _install(model_root, target, staging, spec.sha256)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _resolve(name: str, url: str | None, sha256: str | None) -> ModelSpec:
    """Turn the caller's arguments into one validated :class:`ModelSpec`."""
    if not _NAME_RE.fullmatch(name) or ".." in name:
        raise DownloadError(
            f"invalid model name {name!r}: use letters, digits, '.', '_', '+' and '-' only, "
            "as in vosk-model-small-en-us-0.15"
        )
    known = KNOWN_MODELS.get(name)
    if sha256 is not None and url is None:
        raise DownloadError(
            f"--sha256 was given for {name!r} without --url; a custom model needs both "
            "(known models carry their own checksum)"
        )
    if url is not None and sha256 is not None:
        spec = ModelSpec(
            name=name, url=url, sha256=sha256.strip().lower(), size=None, description="custom model"
        )
    elif url is not None:
        if known is None:
            raise DownloadError(
                f"{name!r} is not a known model, so --url needs --sha256 with the archive's "
                f"SHA-256 as well; known models: {_known_names()}"
            )
        spec = ModelSpec(
            name=name, url=url, sha256=known.sha256, size=known.size, description=known.description
        )
    elif known is not None:
        spec = known
    else:
        raise DownloadError(
            f"unknown model {name!r}; known models: {_known_names()} "
            f"(see {_MODELS_PAGE}, or pass --url and --sha256 for another archive)"
        )

    if not _SHA256_RE.fullmatch(spec.sha256):
        raise DownloadError(f"invalid SHA-256 {spec.sha256!r} for {name}: expected 64 hexadecimal digits")
    parts = urllib.parse.urlsplit(spec.url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise DownloadError(f"unsupported URL {spec.url!r} for {name}: use an http:// or https:// URL")
    return spec


def _known_names() -> str:
    return ", ".join(sorted(KNOWN_MODELS))


def _fetch(spec: ModelSpec, dest: Path, *, timeout: float, progress: ProgressCallback | None) -> int:
    """Stream ``spec.url`` into ``dest`` and check its SHA-256; return the byte count."""
    request = urllib.request.Request(spec.url, headers={"User-Agent": f"realtime-ser/{__version__}"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise DownloadError(
            f"cannot download {spec.url}: the server answered HTTP {exc.code} {exc.reason}; "
            f"check the URL or {_MANUAL_HINT}"
        ) from exc
    except urllib.error.URLError as exc:
        raise DownloadError(
            f"cannot reach {spec.url}: {_net_reason(exc.reason, timeout)}; "
            f"check the network or {_MANUAL_HINT}"
        ) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise DownloadError(
            f"cannot reach {spec.url}: {_net_reason(exc, timeout)}; check the network or {_MANUAL_HINT}"
        ) from exc

    digest = hashlib.sha256()
    done = 0
    with response:
        total = _content_length(response) or spec.size
        try:
            out = dest.open("wb")
        except OSError as exc:
            raise DownloadError(f"cannot write {dest}: {_os_reason(exc)}") from exc
        with out:
            while True:
                try:
                    chunk = response.read(_CHUNK_SIZE)
                except (OSError, http.client.HTTPException) as exc:
                    raise DownloadError(
                        f"download of {spec.url} broke off after {done} bytes: "
                        f"{_net_reason(exc, timeout)}; try again or {_MANUAL_HINT}"
                    ) from exc
                if not chunk:
                    break
                digest.update(chunk)
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise DownloadError(f"cannot write {dest}: {_os_reason(exc)}") from exc
                done += len(chunk)
                if progress is not None:
                    progress(done, total)

    got = digest.hexdigest()
    if got != spec.sha256:
        raise DownloadError(
            f"checksum mismatch for {spec.url}: expected sha256 {spec.sha256}, got {got} "
            f"({done} bytes); the download is corrupt or the file changed upstream; "
            "it was deleted, nothing was installed"
        )
    return done


def _content_length(response: http.client.HTTPResponse) -> int | None:
    value = response.headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _net_reason(reason: object, timeout: float) -> str:
    """A short, human description of a network failure."""
    if isinstance(reason, TimeoutError):
        return f"timed out after {timeout:g} s"
    if isinstance(reason, socket.gaierror):
        return f"host name lookup failed ({reason.strerror or reason})"
    if isinstance(reason, http.client.IncompleteRead):
        return f"connection closed early ({len(reason.partial)} bytes read, more expected)"
    if isinstance(reason, OSError):
        return _os_reason(reason)
    return str(reason) or type(reason).__name__


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _extract(archive: Path, dest: Path, url: str) -> Path:
    """Unpack a zip or tar(.gz) archive into ``dest``; return the model directory.

    Members with absolute paths, drive letters or ``..`` components, and tar
    links or special files, are rejected before anything is written. If the
    archive holds exactly one top-level directory, that directory is returned.
    """
    dest.mkdir()
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, dest, url)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, dest, url)
        else:
            raise DownloadError(
                f"the archive from {url} is neither a zip nor a tar.gz file; check the URL or {_MANUAL_HINT}"
            )
    except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError) as exc:
        raise DownloadError(f"the archive from {url} is corrupt: {exc}; try again or {_MANUAL_HINT}") from exc
    except OSError as exc:
        raise DownloadError(f"cannot unpack the archive from {url}: {_os_reason(exc)}") from exc

    entries = list(dest.iterdir())
    if not entries:
        raise DownloadError(f"the archive from {url} is empty; check the URL or {_MANUAL_HINT}")
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return dest


def _member_path(name: str, url: str) -> PurePosixPath | None:
    """The safe relative path of an archive member, or None for the archive root."""
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or re.match(r"^[A-Za-z]:", normalized):
        raise _unsafe(url, name, "has an absolute path")
    parts = [part for part in normalized.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise _unsafe(url, name, "points outside the archive")
    return PurePosixPath(*parts) if parts else None


def _unsafe(url: str, member: str, why: str) -> DownloadError:
    return DownloadError(
        f"unsafe archive from {url}: member {member!r} {why}; refusing to unpack it "
        "(zip-slip protection), nothing was installed"
    )


def _target(dest: Path, relative: PurePosixPath, name: str, url: str) -> Path:
    path = dest.joinpath(*relative.parts)
    if not path.resolve().is_relative_to(dest.resolve()):
        raise _unsafe(url, name, "points outside the archive")
    return path


def _extract_zip(archive: Path, dest: Path, url: str) -> None:
    with zipfile.ZipFile(archive) as zf:
        members = [(info, _member_path(info.filename, url)) for info in zf.infolist()]
        for info, relative in members:
            if relative is None:
                continue
            path = _target(dest, relative, info.filename, url)
            if info.is_dir():
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, path.open("wb") as out:
                shutil.copyfileobj(src, out, _CHUNK_SIZE)


def _extract_tar(archive: Path, dest: Path, url: str) -> None:
    with tarfile.open(archive, "r:*") as tf:
        members = [(member, _member_path(member.name, url)) for member in tf.getmembers()]
        for member, _relative in members:
            if not (member.isfile() or member.isdir()):
                raise _unsafe(url, member.name, "is a link or special file")
        for member, relative in members:
            if relative is None:
                continue
            path = _target(dest, relative, member.name, url)
            if member.isdir():
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            src = tf.extractfile(member)
            if src is None:  # pragma: no cover - isfile() members always have data
                raise DownloadError(f"the archive from {url} is corrupt: no data for {member.name!r}")
            with src, path.open("wb") as out:
                shutil.copyfileobj(src, out, _CHUNK_SIZE)


def _write_marker(model_root: Path, spec: ModelSpec, archive_bytes: int) -> None:
    record = {"name": spec.name, "url": spec.url, "sha256": spec.sha256, "archive_bytes": archive_bytes}
    (model_root / MARKER_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def is_installed(target: Path, spec: ModelSpec) -> bool:
    """True when ``target`` holds a verified download of ``spec`` (its marker records the checksum)."""
    return _is_complete(target, spec.sha256)


def _is_complete(target: Path, sha256: str) -> bool:
    """True if ``target`` holds a verified extraction of the archive with ``sha256``."""
    try:
        record = json.loads((target / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("sha256") == sha256


def _install(model_root: Path, target: Path, staging: Path, sha256: str) -> Path:
    """Atomically move the verified ``model_root`` to ``target``."""
    if target.exists() or target.is_symlink():
        # Something incomplete or stale sits where the model belongs: set it
        # aside inside the staging directory, which is removed afterwards.
        logger.warning("replacing incomplete or outdated model directory %s", target)
        try:
            target.rename(staging / "replaced")
        except OSError as exc:
            raise DownloadError(
                f"cannot replace the incomplete model directory {target}: {_os_reason(exc)}; "
                "delete it and try again"
            ) from exc
    try:
        model_root.rename(target)
    except OSError as exc:
        if _is_complete(target, sha256):  # another process installed it meanwhile
            return target
        raise DownloadError(f"cannot move the model into {target}: {_os_reason(exc)}") from exc
    logger.info("installed model in %s", target)
    return target


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``realtime-ser models download`` to ``parser``."""
    parser.add_argument(
        "name",
        nargs="?",
        help="model to download, e.g. vosk-model-small-en-us-0.15 (see --list)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="directory that holds downloaded models (default: $REALTIME_SER_CACHE/models, "
        "$XDG_CACHE_HOME/realtime-ser/models or ~/.cache/realtime-ser/models)",
    )
    parser.add_argument(
        "--url",
        help="download the archive from this URL instead (a mirror for a known model, "
        "or a custom model together with --sha256)",
    )
    parser.add_argument("--sha256", help="expected SHA-256 of the archive at --url (custom models)")
    parser.add_argument("--list", action="store_true", help="list the known models and exit")


def run(args: argparse.Namespace) -> int:
    """Run ``realtime-ser models download``; print the model directory on stdout.

    :class:`DownloadError` propagates to the caller, which prints it and exits 1.
    """
    if args.list:
        for spec in KNOWN_MODELS.values():
            print(f"{spec.name:<30} {spec.description}")
        return 0
    if not args.name:
        raise DownloadError(f"name the model to download (known models: {_known_names()}), or use --list")

    meter = _ProgressLine(args.name, sys.stderr) if sys.stderr.isatty() else None
    try:
        path = download_model(
            args.name,
            args.cache_dir,
            url=args.url,
            sha256=args.sha256,
            progress=meter,
        )
    finally:
        if meter is not None:
            meter.close()
    print(path)
    return 0


class _ProgressLine:
    """A one-line percentage meter, redrawn in place on a terminal."""

    def __init__(self, name: str, stream: TextIO) -> None:
        self._name = name
        self._stream = stream
        self._last: str | None = None

    def __call__(self, done: int, total: int | None) -> None:
        if total:
            text = f"{min(100, done * 100 // total)}% of {total / 1e6:.1f} MB"
        else:
            text = f"{done / 1e6:.1f} MB"
        if text != self._last:
            self._last = text
            self._stream.write(f"\rdownloading {self._name}: {text}")
            self._stream.flush()

    def close(self) -> None:
        if self._last is not None:
            self._stream.write("\n")
            self._stream.flush()
