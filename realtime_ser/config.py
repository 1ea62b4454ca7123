"""Configuration: one frozen dataclass per part, loaded from TOML.

``configs/default.toml`` holds the defaults (the same values as the dataclass
defaults below). A user file overrides any subset; unknown sections or keys are
an error that names the allowed ones. Command-line flags override both, through
:func:`apply_overrides` with ``section.key=value`` strings.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from .errors import ConfigError
from .frames import ALLOWED_FRAME_MS

ALLOWED_INPUT_RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000)
ASR_BACKENDS = ("pocketsphinx", "vosk", "none", "whisper", "auto")
VAD_DETECTORS = ("silero", "webrtc")
WHISPER_WINDOWS = (10, 15, 30)
WHISPER_LEVEL_LIMITS = (-60.0, -6.0)
"""The levels the speech encoder scales to (``realtime_ser.features.speech.LEVEL_LIMITS``)."""
AUTO_GAIN_LIMITS = (-60.0, -10.0)
"""Levels ``vad.auto_gain_dbfs`` may ask for (dBFS; 0 = off)."""
WHISPER_WORD_TIMES = ("timestamps", "align")
WHISPER_COMPUTE_TYPES = ("int8", "int8_float32", "int16", "float32", "default")


@dataclass(frozen=True)
class SourceConfig:
    """Where audio comes from and how it is paced."""

    frame_ms: int = 30
    """Frame length handed to the segmenter; one of 10, 20, 30."""
    stdin_rate: int = 16000
    """Sample rate of raw PCM16 on stdin (``--input -``)."""
    stdin_channels: int = 1
    """Channel count of raw PCM16 on stdin (interleaved)."""
    split_channels: bool = False
    """Treat a stereo input as two speakers ``ch0``/``ch1`` instead of mixing it down."""
    realtime: bool = False
    """Pace file input at the speed of speech (otherwise as fast as possible)."""
    mic_device: str = ""
    """Microphone device name or index ('' = the system default)."""
    queue_frames: int = 1000
    """Bound of the source -> segmenter queue (frames). Live input that finds it full
    drops the frame and counts it; file input waits."""


@dataclass(frozen=True)
class VadConfig:
    """Utterance segmentation: a voice detector per frame, start and end decisions around it."""

    detector: str = "webrtc"
    """``webrtc`` (webrtcvad) or ``silero`` (Silero VAD, a small neural network run with onnxruntime).
    Silero finds the end of speech more exactly and keeps ending utterances in babble, where
    webrtcvad does not, but it hears no speech at all in some shouted, high-arousal utterances
    (15 of the 1200 RAVDESS clips), which an emotion monitor cannot afford; so webrtcvad is the
    default (bench/results/vad_compare.md)."""
    threshold: float = 0.5
    """Silero: speech probability at which speech starts (it ends below ``threshold - 0.15``)."""
    aggressiveness: int = 2
    """webrtcvad mode 0 (least) .. 3 (most aggressive at rejecting non-speech)."""
    start_ms: int = 90
    """Voiced audio needed within ``start_window_ms`` to start an utterance."""
    start_window_ms: int = 150
    start_padding_ms: int = 300
    """Audio before the detected start that is given to the recognizer."""
    end_padding_ms: int = 200
    """Audio after the last voiced frame that is given to the recognizer."""
    hangover_ms: int = 400
    """Unvoiced time after which an utterance ends (the end-of-speech decision delay). 400 ms
    answers about 90 ms sooner than 500 ms and splits about 1% of single-sentence clips at a pause
    (CREMA-D; RAVDESS 0.5%, TESS none)."""
    min_utterance_ms: int = 250
    """Utterances with less voiced span than this are discarded."""
    max_utterance_ms: int = 15000
    """Utterances are cut at this length; the speech goes on as the next utterance."""
    input_timeout_ms: int = 1000
    """An open utterance is closed when no audio arrives for this long (live input)."""
    auto_gain_dbfs: float = 0.0
    """Quiet input: the level (dB below full scale) the voice detector should hear speech at; 0 = off.
    When on, the detector (not the recognizer or the emotion model, which get the audio as it came)
    hears each frame raised by a gain that brings the stream's recent speech level (the 95th
    percentile of its frames' levels over the last 10 s) up to this level, at most
    ``auto_gain_max_db``. It is never lowered, it is only set while those 10 s hold a level range
    of speech (95th against 10th percentile at least 12 dB apart) and it holds through pauses, so
    steady noise is not raised. Speech that is quiet at the microphone otherwise goes unheard:
    webrtcvad misses a third of acted clips 30 dB below their recorded level."""
    auto_gain_max_db: float = 30.0
    """The most gain ``auto_gain_dbfs`` may give the detector (dB)."""


@dataclass(frozen=True)
class AsrConfig:
    """Speech recognition."""

    backend: str = "pocketsphinx"
    """One of ``pocketsphinx``, ``vosk``, ``whisper``, ``none``, or ``auto``: whisper when
    CTranslate2 and its model are installed, else pocketsphinx (what the command line
    uses unless ``--asr``, ``--set asr.backend=...`` or a config file names one)."""
    vosk_model: str = ""
    """Directory of a Vosk model (required for ``vosk``)."""
    pocketsphinx_model: str = ""
    """Directory of a pocketsphinx acoustic model ('' = the bundled en-us)."""
    pocketsphinx_dict: str = ""
    pocketsphinx_lm: str = ""
    pocketsphinx_maxhmmpf: int = 3000
    """Search beam: most HMMs evaluated per frame (-1 = no limit). 3000 halves decoding
    time against no limit for +0.01 word error rate on emotional speech."""
    worker_processes: bool = True
    """Run pocketsphinx streams in worker processes: its decoder holds the GIL while
    decoding, which would starve the segmenter and the server's event loop."""
    worker_timeout_s: float = 30.0
    """A recognizer call that does not return within this fails: a worker process is stopped
    (utterance error), whisper's shared decoder fails the utterances waiting for it, and a
    recognizer in this process (vosk) ends its session with a ``recognizer_hung`` error."""
    whisper_model: str = ""
    """Directory of a CTranslate2 Whisper model ('' = the one ``realtime-ser models prepare
    whisper-base`` puts in the cache)."""
    whisper_language: str = "en"
    """Language code of the speech ('' = detect it per utterance)."""
    whisper_threads: int = 0
    """CPU threads for one decode (0 = the available cores, at most 8)."""
    whisper_beam_size: int = 1
    """Beam width (1 = greedy, the fastest)."""
    whisper_compute_type: str = "int8"
    """CTranslate2 weight type: int8 (fastest on a CPU), int8_float32, int16, float32."""
    whisper_partial_s: float = 1.0
    """Partial pass on the open utterance each time it has grown by this many seconds of audio,
    when no final transcript waits for the decoder; the words two passes agree on are published
    (0 = none: Whisper then gives only final transcripts). A pass costs about a tenth of a second
    of the decoder; they never delay a final transcript that is waiting."""
    whisper_window_s: int = 0
    """Encoder window: 0 = per utterance, the smallest of 10, 15, 30 s that holds it with room;
    10, 15 or 30 = always that one (utterances that do not fit still go to 30 s)."""
    whisper_level_dbfs: float = -26.0
    """Scale each utterance's active part to this RMS level (dB below full scale) before Whisper's
    encoder; 0 = the level as recorded. The packaged emotion models are trained on -26, so the
    one encoder pass serves both; a model trained at another level (or none) pays its own pass."""
    whisper_word_times: str = "timestamps"
    """``timestamps``: from the timestamp tokens of the decode itself (no second pass);
    ``align``: cross-attention alignment, one more decoder pass per utterance."""
    whisper_max_batch: int = 8
    """Most utterances the decoder encodes and decodes together."""
    whisper_decode_ahead: bool = True
    """Decode the utterance once a pause has lasted ``vad.end_padding_ms``, inside the hangover
    that decides whether the pause ends it: when it does, the transcript is ready (or nearly) at
    the end. A speaker who goes on voids that decode (decoder time spent for nothing); the
    utterance is decoded again at its next pause. Off: decode after the end."""
    partial_interval_ms: int = 300
    """At most one ``transcript.partial`` per this much audio, and only when the text changed."""
    partials: bool = True
    queue_items: int = 2000
    """Bound of the segmenter -> recognizer queue. Live input that finds it full drops
    speech frames (counted and reported); utterance boundaries are never dropped."""


@dataclass(frozen=True)
class OutputConfig:
    """Where events go."""

    jsonl: str = ""
    """Path to write events as JSON lines, ``-`` for stdout, '' for none."""
    view: str = "auto"
    """Terminal view: ``auto`` (when stdout is a terminal and no JSONL goes there),
    ``on`` or ``off``."""
    queue_events: int = 1000
    """Bound of the recognizer -> output queue. Final utterances are never dropped:
    the recognizer waits when it is full."""


@dataclass(frozen=True)
class ServerConfig:
    """The WebSocket/HTTP server (``realtime-ser serve``); see docs/protocol.md."""

    host: str = "127.0.0.1"
    port: int = 8765
    vosk_port: int = 0
    """A second port that speaks only the vosk-server protocol, on any path, for vosk-server's
    clients (they connect to ws://localhost:2700): e.g. 2700; 0 = none (the protocol is still
    served on ``port`` at ``/``)."""
    token: str = ""
    """Bearer token required on every endpoint but /healthz ('' = none); several, one per client,
    separated by commas."""
    certfile: str = ""
    """TLS certificate (PEM); with ``keyfile``, the server speaks wss:// and https://."""
    keyfile: str = ""
    max_sessions: int = 32
    """Live sessions at once; more are refused with close code 4013."""
    max_sessions_per_token: int = 0
    """Live sessions one token may hold at once (0 = only ``max_sessions``); more: 4013."""
    max_frame_bytes: int = 65536
    """Largest message a client may send; larger ones close with 1009."""
    max_messages_per_s: int = 200
    """Per connection, averaged over a 2 s burst; beyond it the client is closed with 4029."""
    ingest_buffer_s: float = 30.0
    """Audio a session may hold unprocessed; while full the server stops reading."""
    ingest_stall_s: float = 20.0
    """A full buffer that makes no room for this long closes the ingest with 4009."""
    log_events: int = 10000
    """Events kept per session for subscribers resuming with since=."""
    retain_ended_s: float = 600.0
    """How long an ended session stays readable."""
    subscriber_queue: int = 1000
    """Events waiting for one subscriber; beyond it the subscriber is closed with 4008."""
    write_limit_bytes: int = 32768
    """Outgoing bytes buffered per connection before sending waits (then the subscriber queue fills)."""
    shutdown_timeout_s: float = 2.5
    """On shutdown, how long sessions get to flush before connections are closed."""
    release_memory_s: float = 30.0
    """How often freed heap memory is handed back to the system (glibc's ``malloc_trim``;
    without it the resident size of a long-running server creeps up); 0 = never."""
    origins: str = ""
    """Browser pages allowed to open WebSockets, comma-separated (``https://dash.example.com``);
    '' = only pages served by this server; '*' = any. Clients that send no Origin header
    (not browsers) are not affected."""
    bus: str = ""
    """Where sessions and events are shared between nodes: '' = in this process only (one node);
    ``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]``, ``rediss://...`` (TLS; ``?ssl_ca_certs=PEM``
    to trust a private CA) or ``unix:///PATH.sock``: every node on the same Redis serves every
    session of the cluster (docs/deploy.md)."""
    node: str = ""
    """This node's name in the cluster ('' = HOSTNAME:PORT); shown in /sessions."""
    bus_prefix: str = "rtser"
    """Prefix of every Redis key, so several clusters can share one Redis."""
    bus_node_ttl_s: float = 5.0
    """A node that has not renewed its heartbeat for this long is lost: another node ends its
    live sessions (``session.ended``, reason ``node_lost``) within about this plus 1 s."""
    bus_buffer_events: int = 100000
    """Events a node holds for Redis while Redis is unreachable (all sessions together, and at
    most ``log_events`` per session); older ones are dropped and reported (``events_lost``)."""
    bus_feed_events: int = 100000
    """Length of the Redis stream of every session's events that nodes follow (about)."""


@dataclass(frozen=True)
class EmotionConfig:
    """The emotion stage: which model scores each utterance, and its dialogue context."""

    enabled: bool = True
    model: str = ""
    """Exported model directory (model.onnx + card.json); '' = the packaged model: ``default``
    (audio + text), or ``audio`` when recognition is off (``asr.backend = "none"``)."""
    text_encoder: str = ""
    """Prepared text encoder directory; '' = the one the model card names, in the cache
    (``realtime-ser models prepare``)."""
    speech_encoder: str = ""
    """CTranslate2 Whisper model whose encoder gives the audio features; '' = the prepared Whisper
    base (``realtime-ser models prepare``). It must be the one the model was trained with."""
    encoder_threads: int = 0
    """Cores the speech encoder uses (0 = all, at most 8); when Whisper is also the recognizer
    the two share one model, loaded with the first one's setting."""
    encode_ahead: bool = True
    """Start the speech encoder once a pause has lasted ``vad.end_padding_ms``, inside the hangover
    that decides whether the pause ends the utterance, so that its pass (about 140 ms on 2 cores)
    is mostly done when the utterance ends; a speaker who goes on voids the pass (CPU spent for
    nothing). Off: the encoder runs after the end. Not used when Whisper, the recognizer, hands
    over its own encoder pass."""
    max_turns: int = 0
    """Context window in turns, the current one included (0 = what the model card says)."""
    reset_after_s: float = 60.0
    """Forget the context after this much silence between turns (0 = never)."""
    threads: int = 1
    """onnxruntime threads of the shared emotion worker."""
    timeout_s: float = 10.0
    """An utterance whose emotion takes longer is sent without it (``emotion: null``, an ``error``)."""
    revise: bool = False
    """After each turn, re-score the window's earlier turns with an offline (bidirectional) model
    and send ``emotion.revised`` for a turn whose label changes with the later context."""
    revise_model: str = ""
    """Offline model directory for revisions ('' = the packaged ``offline`` model). It scores the live
    model's audio and text vectors, so it must have been trained on the same ones (the same feature
    keys in both cards: front ends, input level, segmentation); another is refused at start."""


@dataclass(frozen=True)
class AlertConfig:
    """Escalation alerts (``alert`` events): a speaker's negative emotion that persists
    or rises over recent turns. The level of a speaker at a turn is the mean, over
    their last ``window_turns`` turns that carry an emotion, of the probability mass
    the model puts on the ``negative`` labels. See realtime_ser/alerts.py."""

    enabled: bool = True
    negative: str = "angry,sad,frustrated"
    """Comma-separated labels that count as negative (labels a model does not have are ignored)."""
    window_turns: int = 4
    """Turns of one speaker that the level averages over."""
    raise_level: float = 0.5
    """A turn counts towards raising when both the level and its own negative score reach this."""
    raise_turns: int = 2
    """Consecutive such turns needed to raise (so one negative turn never does)."""
    raise_seconds: float = 0.0
    """Stream seconds the level must also stay at or above ``raise_level`` (0 = no minimum)."""
    clear_level: float = 0.3
    """A turn counts towards clearing when both are at most this; below ``raise_level`` (hysteresis)."""
    clear_turns: int = 2
    """Consecutive such turns needed to clear a raised alert."""
    clear_seconds: float = 0.0
    """Stream seconds the level must also stay at or below ``clear_level`` (0 = no minimum)."""

    @property
    def negative_labels(self) -> frozenset[str]:
        return frozenset(label.strip() for label in self.negative.split(",") if label.strip())

    def validate(self) -> AlertConfig:
        """Check value ranges; raise :class:`ConfigError` naming what is allowed."""
        labels = self.negative_labels
        if not labels:
            raise ConfigError("alerts.negative must name at least one label, e.g. \"angry,sad\"")
        bad = sorted(label for label in labels if not label.replace("_", "").replace("-", "").isalnum())
        if bad:
            raise ConfigError(f"alerts.negative: {', '.join(map(repr, bad))} is not a label; "
                              "use comma-separated names of letters, digits, '_' or '-'")
        for name in ("window_turns", "raise_turns", "clear_turns"):
            if getattr(self, name) < 1:
                raise ConfigError(f"alerts.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("raise_seconds", "clear_seconds"):
            if getattr(self, name) < 0:
                raise ConfigError(f"alerts.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.raise_level <= 1.0:
            raise ConfigError(f"alerts.raise_level must be in (0, 1], got {self.raise_level}")
        if not 0.0 <= self.clear_level < self.raise_level:
            raise ConfigError(f"alerts.clear_level must be in [0, alerts.raise_level) for hysteresis, "
                              f"got {self.clear_level} with raise_level {self.raise_level}")
        return self


@dataclass(frozen=True)
class PipelineConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    vad: VadConfig = field(default_factory=VadConfig)
    asr: AsrConfig = field(default_factory=AsrConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    alerts: AlertConfig = field(default_factory=AlertConfig)
    emotion: EmotionConfig = field(default_factory=EmotionConfig)

    def validate(self) -> PipelineConfig:
        """Check value ranges; raise :class:`ConfigError` naming what is allowed."""
        s, v, a, o = self.source, self.vad, self.asr, self.output
        if s.frame_ms not in ALLOWED_FRAME_MS:
            raise ConfigError(f"source.frame_ms={s.frame_ms} is not allowed; use one of {list(ALLOWED_FRAME_MS)}")
        if s.stdin_rate not in ALLOWED_INPUT_RATES:
            raise ConfigError(
                f"source.stdin_rate={s.stdin_rate} Hz is not supported; use one of {list(ALLOWED_INPUT_RATES)}"
            )
        if s.stdin_channels not in (1, 2):
            raise ConfigError(f"source.stdin_channels={s.stdin_channels} is not allowed; use 1 or 2")
        if s.queue_frames < 10:
            raise ConfigError("source.queue_frames must be at least 10")
        if v.detector not in VAD_DETECTORS:
            raise ConfigError(f"vad.detector={v.detector!r} is not known; use one of {', '.join(VAD_DETECTORS)}")
        if not 0.0 < v.threshold < 1.0:
            raise ConfigError(f"vad.threshold must be between 0 and 1 (a speech probability), got {v.threshold}")
        if v.aggressiveness not in (0, 1, 2, 3):
            raise ConfigError(f"vad.aggressiveness={v.aggressiveness} is not allowed; use 0, 1, 2 or 3")
        for name in ("start_ms", "start_window_ms", "start_padding_ms", "end_padding_ms", "hangover_ms",
                     "min_utterance_ms", "max_utterance_ms", "input_timeout_ms"):
            if getattr(v, name) < 0:
                raise ConfigError(f"vad.{name} must be >= 0, got {getattr(v, name)}")
        if v.start_ms > v.start_window_ms:
            raise ConfigError("vad.start_ms must not exceed vad.start_window_ms")
        if v.hangover_ms < s.frame_ms:
            raise ConfigError(f"vad.hangover_ms must be at least one frame ({s.frame_ms} ms)")
        if v.end_padding_ms > v.hangover_ms:
            raise ConfigError("vad.end_padding_ms must not exceed vad.hangover_ms")
        if v.max_utterance_ms < max(v.min_utterance_ms, 1000):
            raise ConfigError("vad.max_utterance_ms must be at least 1000 and at least vad.min_utterance_ms")
        if v.auto_gain_dbfs and not AUTO_GAIN_LIMITS[0] <= v.auto_gain_dbfs <= AUTO_GAIN_LIMITS[1]:
            raise ConfigError(f"vad.auto_gain_dbfs={v.auto_gain_dbfs} is not allowed; use 0 (off) or "
                              f"{AUTO_GAIN_LIMITS[0]:g}..{AUTO_GAIN_LIMITS[1]:g} (dB below full scale)")
        if not 0.0 < v.auto_gain_max_db <= 60.0:
            raise ConfigError(f"vad.auto_gain_max_db={v.auto_gain_max_db} is not allowed; use more than 0 and "
                              "at most 60 (dB)")
        if a.backend not in ASR_BACKENDS:
            raise ConfigError(f"asr.backend={a.backend!r} is not known; use one of {', '.join(ASR_BACKENDS)}")
        if a.whisper_threads < 0:
            raise ConfigError("asr.whisper_threads must be >= 0 (0 = the available cores)")
        if a.whisper_beam_size < 1:
            raise ConfigError("asr.whisper_beam_size must be at least 1")
        if a.whisper_compute_type not in WHISPER_COMPUTE_TYPES:
            raise ConfigError(f"asr.whisper_compute_type={a.whisper_compute_type!r} is not allowed; "
                              f"use one of {', '.join(WHISPER_COMPUTE_TYPES)}")
        if a.whisper_partial_s < 0:
            raise ConfigError("asr.whisper_partial_s must be >= 0 (0 = no partial passes)")
        if a.whisper_window_s not in (0, *WHISPER_WINDOWS):
            raise ConfigError(f"asr.whisper_window_s={a.whisper_window_s} is not allowed; use 0 (per utterance) or "
                              f"one of {', '.join(map(str, WHISPER_WINDOWS))}")
        if a.whisper_level_dbfs and not WHISPER_LEVEL_LIMITS[0] <= a.whisper_level_dbfs <= WHISPER_LEVEL_LIMITS[1]:
            raise ConfigError(f"asr.whisper_level_dbfs={a.whisper_level_dbfs} is not allowed; use 0 (as recorded) or "
                              f"{WHISPER_LEVEL_LIMITS[0]:g}..{WHISPER_LEVEL_LIMITS[1]:g} (dB below full scale)")
        if a.whisper_word_times not in WHISPER_WORD_TIMES:
            raise ConfigError(f"asr.whisper_word_times={a.whisper_word_times!r} is not allowed; use "
                              f"{' or '.join(WHISPER_WORD_TIMES)}")
        if a.whisper_max_batch < 1:
            raise ConfigError("asr.whisper_max_batch must be at least 1")
        if a.whisper_language and not (a.whisper_language.isascii() and a.whisper_language.isalpha()
                                       and 2 <= len(a.whisper_language) <= 3):
            raise ConfigError(f"asr.whisper_language={a.whisper_language!r} is not a language code; "
                              "use e.g. en, de, fr, or '' to detect it")
        if a.pocketsphinx_maxhmmpf < -1 or a.pocketsphinx_maxhmmpf == 0:
            raise ConfigError("asr.pocketsphinx_maxhmmpf must be -1 (no limit) or a positive number")
        if a.worker_timeout_s <= 0:
            raise ConfigError("asr.worker_timeout_s must be positive")
        if a.partial_interval_ms < 0:
            raise ConfigError("asr.partial_interval_ms must be >= 0")
        if a.queue_items < 10:
            raise ConfigError("asr.queue_items must be at least 10")
        if o.view not in ("auto", "on", "off"):
            raise ConfigError(f"output.view={o.view!r} is not allowed; use auto, on or off")
        if o.queue_events < 1:
            raise ConfigError("output.queue_events must be at least 1")
        srv = self.server
        if not 0 <= srv.port <= 65535:
            raise ConfigError(f"server.port={srv.port} is not a TCP port (0-65535)")
        if not 0 <= srv.vosk_port <= 65535:
            raise ConfigError(f"server.vosk_port={srv.vosk_port} is not a TCP port (1-65535, or 0 for none)")
        if bool(srv.certfile) != bool(srv.keyfile):
            raise ConfigError("server.certfile and server.keyfile must be given together")
        for name in ("max_sessions", "max_frame_bytes", "max_messages_per_s", "log_events", "subscriber_queue",
                     "write_limit_bytes"):
            if getattr(srv, name) < 1:
                raise ConfigError(f"server.{name} must be at least 1")
        if srv.max_sessions_per_token < 0:
            raise ConfigError("server.max_sessions_per_token must be 0 (no own limit) or more")
        if srv.release_memory_s < 0:
            raise ConfigError("server.release_memory_s must be 0 (never) or a positive number of seconds")
        for name in ("ingest_buffer_s", "ingest_stall_s", "retain_ended_s", "shutdown_timeout_s"):
            if getattr(srv, name) <= 0:
                raise ConfigError(f"server.{name} must be positive")
        check_bus_url(srv.bus)
        if not _KEY_PART.match(srv.bus_prefix):
            raise ConfigError(f"server.bus_prefix={srv.bus_prefix!r} is not allowed; use 1-64 letters, digits, "
                              "'_', '.', '-' or ':'")
        if srv.node and not _KEY_PART.match(srv.node):
            raise ConfigError(f"server.node={srv.node!r} is not allowed; use 1-64 letters, digits, "
                              "'_', '.', '-' or ':' ('' = HOSTNAME:PORT)")
        if srv.bus_node_ttl_s < 1:
            raise ConfigError("server.bus_node_ttl_s must be at least 1 second")
        for name in ("bus_buffer_events", "bus_feed_events"):
            if getattr(srv, name) < 100:
                raise ConfigError(f"server.{name} must be at least 100")
        self.alerts.validate()
        e = self.emotion
        if e.max_turns < 0:
            raise ConfigError("emotion.max_turns must be >= 0 (0 = the model's own window)")
        if e.reset_after_s < 0:
            raise ConfigError("emotion.reset_after_s must be >= 0 (0 = never)")
        if e.threads < 1:
            raise ConfigError("emotion.threads must be at least 1")
        if e.timeout_s <= 0:
            raise ConfigError("emotion.timeout_s must be positive")
        return self


_KEY_PART = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
BUS_SCHEMES = ("redis", "rediss", "unix")
BUS_QUERY = ("ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")


def check_bus_url(url: str) -> None:
    """Raise :class:`ConfigError` unless ``url`` is '' or a Redis URL this server can use."""
    if not url or url == "memory":
        return
    parts = urlsplit(url)
    if parts.scheme not in BUS_SCHEMES:
        raise ConfigError(f"server.bus={redact_url(url)!r} is not allowed; use '' (one node, in memory), "
                          "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB], rediss://... (TLS) or unix:///PATH.sock")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"server.bus={redact_url(url)!r}: the port is not a number from 1 to 65535") from None
    if parts.scheme == "unix":
        if not parts.path:
            raise ConfigError(f"server.bus={redact_url(url)!r}: give the socket's path, unix:///PATH.sock")
    else:
        if not parts.hostname:
            raise ConfigError(f"server.bus={redact_url(url)!r}: no host; use redis://HOST[:PORT][/DB]")
        if port == 0:
            raise ConfigError(f"server.bus={redact_url(url)!r}: port 0 is not a Redis port")
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise ConfigError(f"server.bus={redact_url(url)!r}: the database must be a number (/0 .. /15), "
                              f"got /{db}")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - set(BUS_QUERY) - ({"db"} if parts.scheme == "unix" else set()))
    if unknown:
        raise ConfigError(f"server.bus: unknown option(s) {', '.join(unknown)}; allowed: {', '.join(BUS_QUERY)}")
    if any(k.startswith("ssl_") for k in query) and parts.scheme != "rediss":
        raise ConfigError("server.bus: ssl_* options need a rediss:// URL")


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``<set>``: what logs and events may show."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, f"{user}:<set>@{host}", parts.path, parts.query, parts.fragment))


_SECTIONS: dict[str, type] = {
    "source": SourceConfig,
    "vad": VadConfig,
    "asr": AsrConfig,
    "output": OutputConfig,
    "server": ServerConfig,
    "alerts": AlertConfig,
    "emotion": EmotionConfig,
}


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def _coerce(section: str, key: str, value: Any, typ: Any) -> Any:
    where = f"{section}.{key}"
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if typ is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be a string, got {value!r}")
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where} must be a number, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {typ}")  # pragma: no cover


def merge(config: PipelineConfig, data: dict[str, Any], origin: str = "config") -> PipelineConfig:
    """Return ``config`` with the values of a parsed TOML mapping applied."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: the top level must be a table")
    updates: dict[str, Any] = {}
    for section, values in data.items():
        cls = _SECTIONS.get(section)
        if cls is None:
            raise ConfigError(f"{origin}: unknown section [{section}]; allowed: {', '.join(_SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: [{section}] must be a table")
        types = _field_types(cls)
        changes = {}
        for key, value in values.items():
            if key not in types:
                raise ConfigError(
                    f"{origin}: unknown key {section}.{key}; allowed in [{section}]: {', '.join(types)}"
                )
            changes[key] = _coerce(section, key, value, types[key])
        updates[section] = replace(getattr(config, section), **changes)
    return replace(config, **updates)


def load(path: str | Path | None = None) -> PipelineConfig:
    """Defaults, then ``path`` (a TOML file) if given, validated."""
    config = PipelineConfig()
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {p}: {exc}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
        config = merge(config, data, origin=str(p))
    return config.validate()


def apply_overrides(config: PipelineConfig, overrides: list[str]) -> PipelineConfig:
    """Apply ``section.key=value`` strings (command-line ``--set``)."""
    data: dict[str, dict[str, Any]] = {}
    for item in overrides:
        name, sep, value = item.partition("=")
        section, dot, key = name.strip().partition(".")
        if not sep or not dot or not key:
            raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. vad.hangover_ms=400")
        data.setdefault(section, {})[key] = _unquote(value.strip())
    return merge(config, data, origin="--set").validate()


def _unquote(value: str) -> str:
    """A value written as a TOML string (``"/tmp/x"`` or ``'/tmp/x'``, as the trainer's ``--set``
    takes it) stands for its contents; anything else is taken as written and converted to the
    key's type."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            return value
        if isinstance(parsed, str):
            return parsed
    return value


def to_dict(config: PipelineConfig) -> dict[str, Any]:
    """The resolved configuration as plain data (written next to results)."""
    return dataclasses.asdict(config)


SECRET_FIELDS = (("server", "token"),)


def public_dict(config: PipelineConfig) -> dict[str, Any]:
    """:func:`to_dict` with secrets replaced by ``"<set>"``: what events and logs may show."""
    data = to_dict(config)
    for section, key in SECRET_FIELDS:
        if data.get(section, {}).get(key):
            data[section][key] = "<set>"
    if data.get("server", {}).get("bus"):
        data["server"]["bus"] = redact_url(data["server"]["bus"])
    return data
