"""``realtime-ser``: the command line.

Errors the user can fix (a missing file, a bad flag value, no microphone) are
printed as one line, ``realtime-ser: error: ...``, with exit status 1 (2 for
command-line usage errors); never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from . import __version__
from .config import ALLOWED_INPUT_RATES, PipelineConfig, apply_overrides, load
from .errors import ConfigError, RealtimeSerError

log = logging.getLogger("realtime_ser")

_ASR_CHOICES = ["auto", "whisper", "pocketsphinx", "vosk", "none"]
_ASR_HELP = ("speech recognizer (default: auto = whisper when its model is prepared, else pocketsphinx; "
             "a config file's asr.backend is used when it names one)")
_WHISPER_MODEL_HELP = ("CTranslate2 Whisper model directory (default: the one "
                       "'realtime-ser models prepare whisper-base' puts in the cache)")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="realtime-ser",
        description="Live speech emotion recognition: utterances with transcripts, as JSON events.",
    )
    parser.add_argument("--version", action="version", version=f"realtime-ser {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser("run", help="process live or recorded audio into events",
                         description="Process the microphone, an audio file or raw PCM16 on stdin into events.")
    run.add_argument("--input", default="mic", metavar="mic|PATH|-|demo|demo-voices",
                     help="'mic' (default), an audio file (WAV, FLAC, ... any rate and channel count), "
                          "'-' for raw PCM16 on stdin, or a bundled recording: 'demo' (a synthetic call) or "
                          "'demo-voices' (two actors whose emotions change; stereo, use --split-channels)")
    run.add_argument("--asr", choices=_ASR_CHOICES, help=_ASR_HELP)
    run.add_argument("--vosk-model", metavar="DIR", help="Vosk model directory (see 'realtime-ser models download')")
    run.add_argument("--whisper-model", metavar="DIR", help=_WHISPER_MODEL_HELP)
    run.add_argument("--jsonl", metavar="PATH|-", help="write events as JSON lines to PATH, '-' for stdout")
    run.add_argument("--serve", metavar="HOST:PORT",
                     help="also serve this session's events on HOST:PORT, as 'serve' does: the dashboard at /, "
                          "/subscribe, /sessions, /healthz, /metrics (no audio in); after a file's end it "
                          "serves them until Ctrl-C")
    run.add_argument("--config", metavar="FILE", help="TOML configuration (see configs/default.toml)")
    pace = run.add_mutually_exclusive_group()
    pace.add_argument("--realtime", action="store_true", help="pace file input at the speed of speech")
    pace.add_argument("--fast", action="store_true", help="process file input as fast as possible (default)")
    run.add_argument("--split-channels", action="store_true",
                     help="treat each channel of a stereo input as its own speaker (ch0, ch1)")
    run.add_argument("--rate", type=int, metavar="HZ",
                     help=f"sample rate of raw PCM16 on stdin; one of {', '.join(map(str, ALLOWED_INPUT_RATES))}")
    run.add_argument("--channels", type=int, choices=[1, 2], help="channel count of raw PCM16 on stdin")
    run.add_argument("--session", metavar="ID", help="session id (default: a random one)")
    run.add_argument("--view", choices=["auto", "on", "off"], help="readable terminal view (default: auto)")
    run.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="override any configuration value, e.g. --set vad.hangover_ms=400 (repeatable)")
    run.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv for debug)")

    srv = sub.add_parser("serve", help="serve sessions over WebSocket (ingest, subscribe, vosk-server protocol)",
                         description="Audio arrives over WebSocket; events go to any number of subscribers. "
                                     "Protocol: docs/protocol.md.")
    srv.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    srv.add_argument("--port", type=int, help="TCP port (default 8765; 0 = any free port)")
    srv.add_argument("--vosk-port", type=int, metavar="PORT",
                     help="also listen on PORT for the vosk-server protocol alone, e.g. 2700, the port vosk-server's "
                          "clients use (default: none; the protocol is also served on --port at /)")
    srv.add_argument("--asr", choices=_ASR_CHOICES, help=_ASR_HELP)
    srv.add_argument("--vosk-model", metavar="DIR", help="Vosk model directory")
    srv.add_argument("--whisper-model", metavar="DIR", help=_WHISPER_MODEL_HELP)
    srv.add_argument("--token", help="bearer token required on every endpoint but /healthz "
                                     "(or set REALTIME_SER_TOKEN)")
    srv.add_argument("--bus", metavar="URL",
                     help="share sessions with other nodes through Redis: redis://[:PASSWORD@]HOST:PORT/DB or "
                          "rediss://... (TLS); or set REALTIME_SER_BUS (default: none, one node; docs/deploy.md)")
    srv.add_argument("--node", help="this node's name in the cluster (default HOSTNAME:PORT)")
    srv.add_argument("--certfile", help="TLS certificate (PEM)")
    srv.add_argument("--keyfile", help="TLS private key (PEM)")
    srv.add_argument("--config", metavar="FILE", help="TOML configuration (see configs/default.toml)")
    srv.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="override any configuration value (repeatable)")
    srv.add_argument("-v", "--verbose", action="count", default=1, help="log more (-vv for debug)")

    from . import client

    stream = sub.add_parser("stream", help="stream an audio file to a server and print its events",
                            description="Send an audio file to a realtime-ser server's /ingest endpoint.")
    client.add_stream_arguments(stream)
    follow = sub.add_parser("follow", help="follow the events of a session (or all) on a server",
                            description="Subscribe to a server's events; reconnects with since= after a drop.")
    client.add_follow_arguments(follow)

    models = sub.add_parser("models", help="manage recognition models")
    msub = models.add_subparsers(dest="models_command", metavar="ACTION")
    msub.required = True
    dl = msub.add_parser("download", help="download a Vosk model into the cache and print its path")
    from . import download

    download.add_arguments(dl)
    msub.add_parser("list", help="list every model (bundled, 'prepare', 'download'), whether it is here, and where",
                    description="Every model realtime-ser knows: those in the installed packages, those "
                                "'models prepare' builds and those 'models download' fetches; for each, whether it "
                                "is present and where, or the command that gets it.")
    prep = msub.add_parser("prepare", help="build the local model cache (text encoder ONNX export, Whisper assembly)")
    prep.add_argument("names", nargs="*", metavar="MODEL", help="what to prepare (default: everything available)")
    prep.add_argument("--force", action="store_true", help="rebuild even when the cache is valid")

    sub.add_parser("devices", help="list audio input devices")
    return parser


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("realtime_ser")
    root.handlers[:] = [handler]
    root.setLevel(level)


def _file_names_backend(path: str | None) -> bool:
    """True when the config file at ``path`` sets ``asr.backend`` (it was loaded already, so it parses)."""
    if not path:
        return False
    import tomllib
    from pathlib import Path

    data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    asr = data.get("asr")
    return isinstance(asr, dict) and "backend" in asr


def _asr_overrides(args: argparse.Namespace) -> list[str]:
    """``--asr`` and the model flags as ``--set`` strings. With no recognizer named on the
    command line or in the config file, the command line's default is ``auto``."""
    overrides: list[str] = []
    if args.asr:
        overrides.append(f"asr.backend={args.asr}")
    elif not _file_names_backend(args.config) and not any(
            s.partition("=")[0].strip() == "asr.backend" for s in args.set):
        overrides.append("asr.backend=auto")
    if args.vosk_model:
        overrides.append(f"asr.vosk_model={args.vosk_model}")
    if args.whisper_model:
        overrides.append(f"asr.whisper_model={args.whisper_model}")
    return overrides


def _resolve_asr(config: PipelineConfig) -> tuple[PipelineConfig, str]:
    """Settle ``asr.backend = auto`` before anything reports the backend's name; return
    the config and the line that tells the user which recognizer runs ('' if not auto)."""
    from dataclasses import replace

    from .asr import resolve_auto

    asr, notice = resolve_auto(config.asr)
    return replace(config, asr=asr), notice


def _notify(notice: str) -> None:
    """Tell a person at a terminal which recognizer ``auto`` chose; programs reading stderr
    keep getting nothing but errors (and the session.started event names the recognizer)."""
    if notice and sys.stderr.isatty():
        print(f"realtime-ser: {notice}", file=sys.stderr, flush=True)


def _run(args: argparse.Namespace) -> int:
    from .output import JsonlSink, TerminalView
    from .pipeline import Pipeline, new_session_id
    from .server.local import LocalServer, parse_host_port
    from .sources import open_source

    config = load(args.config)
    overrides: list[str] = _asr_overrides(args)
    if args.realtime:
        overrides.append("source.realtime=true")
    if args.fast:
        overrides.append("source.realtime=false")
    if args.split_channels:
        overrides.append("source.split_channels=true")
    if args.rate is not None:
        if args.input != "-":
            raise ConfigError("--rate applies to raw input on stdin (--input -) only")
        if args.rate not in ALLOWED_INPUT_RATES:
            raise ConfigError(f"--rate {args.rate} is not supported; use one of "
                              f"{', '.join(map(str, ALLOWED_INPUT_RATES))}")
        overrides.append(f"source.stdin_rate={args.rate}")
    if args.channels is not None:
        overrides.append(f"source.stdin_channels={args.channels}")
    if args.jsonl:
        overrides.append(f"output.jsonl={args.jsonl}")
    if args.view:
        overrides.append(f"output.view={args.view}")
    config, notice = _resolve_asr(apply_overrides(config, overrides + list(args.set)))
    if config.asr.backend == "vosk" and not config.asr.vosk_model:
        raise ConfigError("--asr vosk needs a model: pass --vosk-model DIR "
                          "(get one with 'realtime-ser models download vosk-model-small-en-us-0.15')")

    if args.serve is not None:
        host, port = parse_host_port(args.serve, config.server.host)
        config = replace(config, server=replace(config.server, host=host, port=port))

    source = open_source(args.input, config.source)
    _notify(notice)  # once the input is known to open
    served: LocalServer | None = None
    if args.serve is not None:
        served = LocalServer(config)
        try:
            served.start()
        except BaseException:
            source.close()
            raise
    session = args.session or new_session_id()
    sinks: list[Any] = []
    jsonl = None
    if config.output.jsonl:
        jsonl = JsonlSink(config.output.jsonl)
        sinks.append(jsonl)
    view = config.output.view
    # The readable lines go to stdout unless the JSON lines do: on a terminal with colour and a
    # status line, into a pipe or a file as plain lines (`realtime-ser run ... | grep angry`).
    show = view == "on" or (view == "auto" and config.output.jsonl != "-")
    if show:
        sinks.append(TerminalView(sys.stdout if config.output.jsonl != "-" else sys.stderr))
    if served is not None:
        sinks.append(served.open_session(session))
        # Where to look: on stderr, so stdout stays the view or the JSON lines.
        print(f"realtime-ser: serving this session's events on {served.url}/subscribe?session={session} "
              f"(dashboard {served.page_url})", file=sys.stderr, flush=True)
    pipeline = Pipeline(config, source, sinks, session=session)
    stops = 0
    ended = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        # Ctrl-C reaches every process of the terminal's foreground group: recognizer workers
        # ignore it, and this process stops the session, flushing what was heard (at most
        # ~1.8 s). A second Ctrl-C does not wait for the flush.
        nonlocal stops
        stops += 1
        ended.set()
        if stops > 1 and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.info("signal %d: stopping after flushing what was heard", signum)
        pipeline.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        pipeline.run()
        if served is not None and not ended.is_set():
            # A file's end: the page and the subscribers still want to see the call.
            print(f"realtime-ser: the input has ended; its events stay on {served.page_url} until Ctrl-C",
                  file=sys.stderr, flush=True)
            while not ended.wait(0.5):
                pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the exit below is no longer interruptible
        if served is not None:
            served.close()  # subscribers get every event, then a normal close
        if jsonl is not None:
            jsonl.close()
        if pipeline.backend_running:
            # A native decode is still running and cannot be interrupted; tearing the process
            # down normally under it would abort it (CTranslate2 threads). What was heard has
            # been written: leave now.
            log.info("exiting while the recognizer finishes a decode")
            _hard_exit(0 if sys.exc_info()[0] is None else 1)
    return 0


def _hard_exit(status: int) -> None:
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(status)


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import os

    from .server import serve_forever

    config = load(args.config)
    overrides: list[str] = _asr_overrides(args)
    for flag, key in (("host", "server.host"), ("port", "server.port"), ("vosk_port", "server.vosk_port"),
                      ("certfile", "server.certfile"), ("keyfile", "server.keyfile")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    token = args.token or os.environ.get("REALTIME_SER_TOKEN")
    if token:
        overrides.append(f"server.token={token}")
    bus = args.bus or os.environ.get("REALTIME_SER_BUS")  # the environment keeps a password off the command line
    if bus:
        overrides.append(f"server.bus={bus}")
    if args.node:
        overrides.append(f"server.node={args.node}")
    config, notice = _resolve_asr(apply_overrides(config, overrides + list(args.set)))
    _notify(notice)

    def ready(server: Any) -> None:
        scheme = "https" if server.scheme == "wss" else "http"
        host = f"{config.server.host}:{server.port}"
        vosk = f"{server.url}/"
        if server.vosk_port:
            vosk = f"{server.scheme}://{config.server.host}:{server.vosk_port} (and {server.url}/)"
        print(f"realtime-ser serving on {server.url}  (ingest {server.url}/ingest, subscribe "
              f"{server.url}/subscribe, vosk-server protocol {vosk}; dashboard {scheme}://{host}/, "
              f"wallboard {scheme}://{host}/wallboard, health {scheme}://{host}/healthz, "
              f"metrics {scheme}://{host}/metrics)", flush=True)

    if not asyncio.run(serve_forever(config, ready=ready)):
        _hard_exit(0)  # a native decode is still running: see _run
    return 0


def _models_list() -> int:
    from . import prepare

    entries = prepare.inventory()
    width = max(len(e.name) for e in entries)
    for e in entries:
        state = "present" if e.present else "missing"
        where = str(e.path) if e.present else f"get it: {e.get}"
        print(f"{e.name:<{width}}  {e.kind:<8}  {state:<7}  {where}")
        print(f"{'':<{width}}  {e.description}")
    return 0


def _devices() -> int:
    from .sources import list_input_devices

    devices = list_input_devices()
    if not devices:
        print("no audio input devices found; use --input FILE or --input - (raw PCM16 on stdin)")
        return 1
    for index, name, channels in devices:
        print(f"[{index}] {name} ({channels} input channels)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    _setup_logging(getattr(args, "verbose", 0))
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "models" and args.models_command == "prepare":
            from . import prepare

            for path in prepare.run(args.names, force=args.force).values():
                if path is not None:
                    print(path)
            return 0
        if args.command == "models" and args.models_command == "list":
            return _models_list()
        if args.command == "models":
            from . import download

            return download.run(args)
        if args.command == "devices":
            return _devices()
        if args.command == "serve":
            return _serve(args)
        if args.command in ("stream", "follow"):
            from . import client

            return client.run_stream(args) if args.command == "stream" else client.run_follow(args)
    except RealtimeSerError as exc:
        print(f"realtime-ser: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`realtime-ser run ... | head`): stop quietly. Python would
        # complain when it flushes stdout at exit, so stdout goes nowhere from now on.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 1
    parser.error(f"unknown command {args.command}")  # pragma: no cover
    return 2


if __name__ == "__main__":
    sys.exit(main())
