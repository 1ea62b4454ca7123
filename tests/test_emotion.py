"""The live emotion stage: packaged models, dialogue context, the shared batching worker, startup errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, SHARED_DATA, validate_event

from realtime_ser.config import AsrConfig, EmotionConfig
from realtime_ser.emotion.model import SHIFT, EmotionModel
from realtime_ser.emotion.service import DialogueContext, EmotionService, Turn, packaged_model
from realtime_ser.errors import ModelError

DEFAULT = packaged_model("default")
AUDIO = packaged_model("audio")


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "realtime_ser", *args], capture_output=True, text=True,
                          timeout=180, cwd=REPO, env={**os.environ, **(env or {})})


def _encoder_ready() -> bool:
    try:
        from realtime_ser.features.text import TextEncoder

        TextEncoder.load()
        return True
    except ModelError:
        return False


needs_encoder = pytest.mark.skipif(not _encoder_ready(), reason="text encoder not prepared: "
                                   "run 'realtime-ser models prepare text-encoder'")


def test_packaged_models_load_and_match_this_runtime() -> None:
    for d in (DEFAULT, AUDIO):
        m = EmotionModel.load(d)
        assert m.card.causal, f"{d.name}: the live runtime needs a causal model"
        assert m.labels == ("neutral", "happy", "sad", "angry")
        assert m.card.raw["licences"], "the card names the licences of its training data"
        assert m.card.raw["metrics"], "the card carries the held-out metrics"
        # Trained at the level the Whisper recognizer encodes at, so its encoder pass serves both.
        level = m.card.raw["features"]["audio"]["speech"]["config"].get("level_dbfs")
        assert level == AsrConfig().whisper_level_dbfs, f"{d.name}: trained at {level}"
        # Keep the wheel light: under 5 MB per averaged model (the audio gate's reference vectors
        # are half of it), and at most three of them.
        members = m.card.raw["members"]["count"]
        assert 1 <= members <= 3 and (d / "model.onnx").stat().st_size < 5_000_000 * members, "keep the wheel light"
    packaged = sum(f.stat().st_size for f in DEFAULT.parent.glob("*/model.onnx"))
    assert packaged < 35_000_000, f"the packaged models weigh {packaged / 1e6:.0f} MB"
    assert EmotionModel.load(AUDIO).card.modalities == ("audio",)
    assert EmotionModel.load(DEFAULT).card.modalities == ("audio", "text")


def test_dialogue_context_window_and_silence_reset() -> None:
    ctx = DialogueContext(max_turns=3, reset_after_s=10)
    for i in range(5):
        assert len(ctx.window(start=i * 2.0)) == min(i, 2)
        ctx.add(Turn("a", i * 2.0, i * 2.0 + 1, {}))
    assert len(ctx.window(start=100.0)) == 0 and ctx.resets == 1
    never = DialogueContext(max_turns=4, reset_after_s=0)
    never.add(Turn("a", 0, 1, {}))
    assert len(never.window(start=10_000.0)) == 1


@needs_encoder
def test_context_of_angry_or_sad_turns_moves_the_scores_that_way(tmp_path: Path) -> None:
    """On held-out IEMOCAP dialogues (Session 4, never trained on; voiced by the held-out RAVDESS
    actors as in the training pairing), each turn is scored with its past turns and alone. In the
    transcripts a turn after angry (sad) turns is angry (sad) far more often than on average, and
    the model's context must move the scores that way: after three or more angry (sad) turns
    P(angry) (P(sad)) is higher with the context than without, and context raises the probability
    of the true label overall."""
    from training.data import convert, read_manifest
    from training.evaluate import extractor_for
    from training.pairing import build_paired

    for corpus in ("iemocap_text", "ravdess"):
        if not (SHARED_DATA / corpus).is_dir():
            pytest.skip(f"needs {SHARED_DATA / corpus} (../shared/data)")
    convert("iemocap_text", None, tmp_path / "iemocap.csv")
    paired = read_manifest(build_paired(tmp_path / "iemocap.csv", tmp_path / "paired.csv"))
    model = EmotionModel.load(DEFAULT)
    dialogues = [d for d in paired.dialogues() if d[0].meta("session") == "Ses04"]
    assert len(dialogues) >= 20
    extractor = extractor_for(model)
    labels = list(model.labels)
    p_ctx, p_alone, y, before = [], [], [], []
    for d in dialogues:
        feats = {"text": extractor.text([u.text for u in d]), "audio": extractor.audio(paired, d)}
        ctx = model.score_dialogue(feats)["probs"]
        alone = model.score({m: x[:, None] for m, x in feats.items()}, np.ones((len(d), 1), bool))["probs"][:, 0]
        for i, u in enumerate(d):
            if u.labeled:
                p_ctx.append(ctx[i])
                p_alone.append(alone[i])
                y.append(labels.index(u.label))
                before.append([x.label for x in d[max(0, i - 6):i] if x.labeled])
    c, a, t = np.stack(p_ctx), np.stack(p_alone), np.array(y)
    rows = np.arange(len(t))
    assert c[rows, t].mean() > a[rows, t].mean() + 0.05, (c[rows, t].mean(), a[rows, t].mean())
    for name in ("angry", "sad"):
        k = labels.index(name)
        after = [i for i, prev in enumerate(before) if prev.count(name) >= 3]
        assert len(after) >= 30, f"only {len(after)} turns follow three {name} turns"
        # The transcripts' own statistics: the label is sticky.
        assert np.mean(t[after] == k) > 2 * np.mean(t == k)
        moved = c[after, k] - a[after, k]
        assert moved.mean() > 0.02, f"{name} context moved P({name}) by {moved.mean():+.3f}"


@needs_encoder
def test_the_shared_worker_batches_sessions_and_keeps_them_apart() -> None:
    service = EmotionService(DEFAULT)
    try:
        rng = np.random.default_rng(0)
        clips = [(rng.normal(0, 3000, 16000 + 800 * i)).astype(np.int16) for i in range(16)]
        texts = [f"this is session number {i} and I am {'furious' if i % 2 else 'fine'}" for i in range(16)]
        alone = [service.submit(c, t, []).result(30)["emotion"]["scores"] for c, t in zip(clips, texts, strict=True)]
        start = threading.Barrier(16)
        results: list[dict | None] = [None] * 16

        def session(i: int) -> None:
            start.wait()
            results[i] = service.submit(clips[i], texts[i], []).result(30)["emotion"]["scores"]

        threads = [threading.Thread(target=session, args=(i,)) for i in range(16)]
        before = service.batches
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert service.batches - before < 16, "concurrent sessions were batched together"
        assert service.batches - before >= 16 // service.encoder_batch, "the speech encoder takes a few at a time"
        for a, b in zip(alone, results, strict=True):
            assert b is not None
            for k in a:
                assert abs(a[k] - b[k]) < 1e-4, "a batched score equals the same turn scored alone"
    finally:
        service.close()


# --------------------------------------------------------------------------- through the CLI


def _ravdess_clip(name: str = "Actor_07/03-01-05-02-01-01-07.flac") -> Path:
    clip = SHARED_DATA / "ravdess" / name
    if not clip.is_file():
        pytest.skip(f"needs {clip} (../shared/data)")
    return clip


@needs_encoder
def test_run_on_a_ravdess_clip_gives_a_schema_valid_emotion() -> None:
    proc = _cli("run", "--input", str(_ravdess_clip()), "--view", "off", "--jsonl", "-")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    for e in events:
        validate_event(e)
    utts = [e for e in events if e["type"] == "utterance"]
    assert utts
    for u in utts:
        emo = u["emotion"]
        assert emo is not None and emo["label"] in emo["scores"]
        assert abs(sum(emo["scores"].values()) - 1) <= 1e-6
        assert set(emo["modalities"]) == {"audio", "text"}
        for scores in emo["modalities"].values():
            assert abs(sum(scores.values()) - 1) <= 1e-6
        assert emo["model"]["name"] == EmotionModel.load(DEFAULT).name
        for stage in ("features", "text", "model"):
            assert stage in u["latency_ms"]


def test_run_without_recognition_uses_the_audio_model() -> None:
    proc = _cli("run", "--input", str(_ravdess_clip()), "--asr", "none", "--view", "off", "--jsonl", "-")
    assert proc.returncode == 0, proc.stderr
    utts = [json.loads(x) for x in proc.stdout.splitlines() if '"utterance"' in x]
    assert utts and all(set(u["emotion"]["modalities"]) == {"audio"} for u in utts)
    assert utts[0]["emotion"]["model"]["name"] == EmotionModel.load(AUDIO).name


def test_a_broken_model_is_a_clear_startup_error(tmp_path: Path) -> None:
    clip = _ravdess_clip()
    broken = tmp_path / "broken"
    shutil.copytree(AUDIO, broken)
    (broken / "model.onnx").write_bytes((broken / "model.onnx").read_bytes()[:1000])
    proc = _cli("run", "--input", str(clip), "--asr", "none", "--view", "off", "--set", f"emotion.model={broken}")
    assert proc.returncode != 0
    assert "does not match its card" in proc.stderr and "utterance" not in proc.stdout
    missing = tmp_path / "missing"
    proc = _cli("run", "--input", str(clip), "--asr", "none", "--view", "off", "--set", f"emotion.model={missing}")
    assert proc.returncode != 0 and "card.json is missing" in proc.stderr
    # A text model without recognition cannot work: say so instead of scoring empty text.
    proc = _cli("run", "--input", str(clip), "--asr", "none", "--view", "off", "--set", f"emotion.model={DEFAULT}")
    assert proc.returncode != 0 and "audio-only model" in proc.stderr


def test_a_missing_text_encoder_names_the_prepare_command(tmp_path: Path) -> None:
    proc = _cli("run", "--input", str(_ravdess_clip()), "--view", "off",
                   env={"REALTIME_SER_CACHE": str(tmp_path / "empty-cache")})
    assert proc.returncode != 0
    assert "realtime-ser models prepare" in proc.stderr


def test_emotion_can_be_switched_off() -> None:
    proc = _cli("run", "--input", str(_ravdess_clip()), "--asr", "none", "--view", "off", "--jsonl", "-",
                   "--set", "emotion.enabled=false")
    assert proc.returncode == 0
    utts = [json.loads(x) for x in proc.stdout.splitlines() if '"utterance"' in x]
    assert utts and all(u["emotion"] is None for u in utts)


def test_emotion_config_is_validated() -> None:
    from realtime_ser.config import PipelineConfig
    from realtime_ser.errors import ConfigError

    with pytest.raises(ConfigError, match="emotion.timeout_s"):
        PipelineConfig(emotion=EmotionConfig(timeout_s=0)).validate()


OFFLINE = packaged_model("offline")


@needs_encoder
def test_revisions_follow_the_offline_model_and_validate(tmp_path: Path) -> None:
    """With emotion.revise on, every earlier turn of the window ends up with the offline model's
    label given the later turns, and each change is announced once as a schema-valid emotion.revised.
    Held-out IEMOCAP dialogues voiced by held-out RAVDESS actors, as in the training pairing."""
    from realtime_ser.emotion.stage import EmotionStage
    from realtime_ser.features.segment import utterance_audio
    from training.data import convert, read_manifest
    from training.pairing import build_paired

    for corpus in ("iemocap_text", "ravdess"):
        if not (SHARED_DATA / corpus).is_dir():
            pytest.skip(f"needs {SHARED_DATA / corpus} (../shared/data)")
    convert("iemocap_text", None, tmp_path / "iemocap.csv")
    paired = read_manifest(build_paired(tmp_path / "iemocap.csv", tmp_path / "paired.csv"))
    dialogues = [d for d in paired.dialogues() if d[0].meta("session") == "Ses04"][:3]
    offline = EmotionModel.load(OFFLINE)
    revisions = 0
    for d in dialogues:
        stage = EmotionStage(EmotionConfig(revise=True), audio_only=False)
        try:
            published: dict[str, str] = {}
            for i, u in enumerate(d):
                path = paired.audio_path(u)
                assert path is not None
                fields = {"utterance_id": f"{u.speaker}-{i}", "speaker": u.speaker, "channel": 0,
                          "start": 4.0 * i, "end": 4.0 * i + 3.0, "text": u.text,
                          "_audio": np.concatenate(utterance_audio(path))}
                assert stage.annotate(fields) is None
                published[fields["utterance_id"]] = fields["emotion"]["label"]
                for rev in stage.revisions:
                    validate_event({"v": 1, "type": "emotion.revised", "session": "s", "seq": i, "t": 4.0 * i, **rev})
                    assert rev["previous_label"] == published[rev["utterance_id"]] != rev["emotion"]["label"]
                    assert rev["emotion"]["model"]["name"] == offline.name
                    published[rev["utterance_id"]] = rev["emotion"]["label"]
                    revisions += 1
            turns = list(stage.context.turns)
            keys = [*offline.card.modalities, *([SHIFT] if offline.card.speaker_norm is not None else [])]
            out = offline.score({k: np.stack([t.vectors[k] for t in turns])[None] for k in keys},
                                np.ones((1, len(turns)), dtype=bool))
            for j, t in enumerate(turns[:-1]):
                assert published[t.utterance_id] == offline.labels[int(out["probs"][0, j].argmax())]
        finally:
            stage.close()
    assert revisions > 0, f"{sum(map(len, dialogues))} turns and not one label changed with hindsight"


def test_sessions_share_one_emotion_worker() -> None:
    """The scoring service is shared: more sessions do not mean more worker threads or model copies."""
    from realtime_ser.emotion.stage import EmotionStage

    stages = [EmotionStage(EmotionConfig(), audio_only=True) for _ in range(4)]
    try:
        assert len({id(s.service) for s in stages}) == 1
        workers = [t for t in threading.enumerate() if t.name == "ser-emotion"]
        assert workers
        before = len(workers)
        more = EmotionStage(EmotionConfig(), audio_only=True)
        more.close()
        assert len([t for t in threading.enumerate() if t.name == "ser-emotion"]) == before
    finally:
        for s in stages:
            s.close()


def test_revisions_need_an_offline_model() -> None:
    with pytest.raises(ModelError, match="offline"):
        from realtime_ser.emotion.stage import EmotionStage

        EmotionStage(EmotionConfig(revise=True, revise_model=str(DEFAULT)), audio_only=False)


def test_scoring_slower_than_the_timeout_sends_the_utterance_without_emotion(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import concurrent.futures

    from realtime_ser.emotion.stage import EmotionStage
    from realtime_ser.recognition import AUDIO

    stage = EmotionStage(EmotionConfig(timeout_s=0.2), audio_only=True)
    try:
        stuck: concurrent.futures.Future[dict] = concurrent.futures.Future()  # never completes
        monkeypatch.setattr(stage.service, "submit", lambda *a, **k: stuck)
        fields = {AUDIO: np.zeros(16000, dtype=np.int16), "start": 0.0, "end": 1.0, "text": "", "speaker": "ch0"}
        message = stage.annotate(fields)
        assert message is not None and "emotion.timeout_s=0.2" in message
        assert "emotion" not in fields and AUDIO not in fields
        assert len(stage.context.window(2.0)) == 0  # the unscored turn does not enter the context
    finally:
        stage.close()


def _speech_model() -> bool:
    return EmotionModel.load(DEFAULT).card.features.get("audio", {}).get("kind") in ("speech", "speech+acoustic")


def _whisper_ready() -> bool:
    from realtime_ser.asr import whisper_backend
    from realtime_ser.config import AsrConfig

    return whisper_backend.model_available(AsrConfig())


@needs_encoder
def test_whisper_and_the_emotion_stage_share_one_encoder_pass() -> None:
    """With Whisper as recognizer, the emotion model pools the encoder output the decoder read:
    the speech encoder runs once per utterance, not twice."""
    if not (_speech_model() and _whisper_ready()):
        pytest.skip("needs the prepared Whisper base and a speech-encoder emotion model")
    from realtime_ser.asr import create_backend
    from realtime_ser.config import AsrConfig, PipelineConfig
    from realtime_ser.features import speech
    from realtime_ser.pipeline import Pipeline
    from realtime_ser.sources import FileSource

    clip = _ravdess_clip()
    config = PipelineConfig(asr=AsrConfig(backend="whisper", whisper_partial_s=0.0))
    backend = create_backend(config.asr)
    try:
        encoder = speech.load(config=speech.SpeechEncoderConfig(level_dbfs=config.asr.whisper_level_dbfs))
        events: list[dict] = []
        Pipeline(config, FileSource(clip, config.source), [events.append], backend=backend).run()  # warm
        before = encoder.calls
        events.clear()
        Pipeline(config, FileSource(clip, config.source), [events.append], backend=backend).run()
        utts = [e for e in events if e["type"] == "utterance"]
        assert len(utts) == 1 and utts[0]["emotion"] is not None and utts[0]["text"]
        assert encoder.calls - before == 1, "the emotion stage encoded the utterance again"
    finally:
        backend.close()


def _demo_turns(name: str, asr: str) -> list[dict]:
    proc = _cli("run", "--input", name, "--split-channels", "--asr", asr, "--view", "off", "--jsonl", "-")
    assert proc.returncode == 0, proc.stderr
    return [e for e in map(json.loads, proc.stdout.splitlines()) if e["type"] == "utterance"]


@needs_encoder
def test_on_the_synthetic_demo_labels_follow_the_words() -> None:
    """The demo's espeak-ng voices are unlike any training voice: the audio's weight drops and no turn
    claims over 90% for a label its own text branch puts under 20%."""
    if not (_speech_model() and _whisper_ready()):
        pytest.skip("needs the prepared Whisper base and a speech-encoder emotion model")
    turns = _demo_turns("demo", "whisper")
    assert len(turns) >= 5
    confident = []
    for t in turns:
        emo = t["emotion"]
        text = emo["modalities"]["text"]
        top = max(emo["scores"].values())
        assert not (top > 0.9 and text[emo["label"]] < 0.2), t
        confident.append(top)
        assert emo["audio_weight"] < 0.5, "synthetic speech should not count as a known voice"
    assert min(confident) < 0.99, "confidences that are 100% everywhere mean nothing"


@pytest.mark.parametrize(("asr", "at_least"), [("pocketsphinx", 5), ("none", 4)])
def test_demo_voices_labels_follow_the_acted_emotions(asr: str, at_least: int) -> None:
    """Two CREMA-D actors never heard in training. The default model (voice and words, what
    ``realtime-ser run --input demo-voices`` runs with any recognizer) gets at least 5 of the 6 turns;
    the audio-only model (``--asr none``) at least 4: the customer's sad turn is a near thing for both."""
    if not _speech_model():
        pytest.skip("needs a speech-encoder emotion model")
    info = json.loads((REPO / "realtime_ser" / "data" / "demo-voices.json").read_text())
    turns = sorted(_demo_turns("demo-voices", asr), key=lambda t: t["start"])
    assert len(turns) == len(info["turns"]), [(t["start"], t["end"]) for t in turns]
    right = 0
    for t, want in zip(turns, info["turns"], strict=True):
        assert t["channel"] == want["channel"]
        right += t["emotion"]["label"] == want["emotion"]
    assert right >= at_least, [(t["emotion"]["label"], w["emotion"]) for t, w in zip(turns, info["turns"], strict=True)]


def test_the_encoder_pass_started_in_the_hangover_gives_the_same_emotion_as_one_after_the_end() -> None:
    """Without a recognizer that shares its encoder pass, a live session's emotion stage starts the
    speech encoder at the pause that ends each turn (inside the hangover): same labels and scores as
    encoding after the end, and no second encoder pass for any turn. Input read faster than real time
    does no work ahead."""
    if not _speech_model():
        pytest.skip("needs a speech-encoder emotion model")
    from realtime_ser.config import AsrConfig, EmotionConfig, PipelineConfig, SourceConfig
    from realtime_ser.pipeline import Pipeline
    from realtime_ser.sources import FileSource

    path = REPO / "realtime_ser" / "data" / "demo-voices.flac"
    runs = {}
    for live in (False, True):  # as fast as it reads, then at the speed of speech; encode_ahead on in both
        config = PipelineConfig(asr=AsrConfig(backend="none"), emotion=EmotionConfig(encode_ahead=True),
                                source=SourceConfig(split_channels=True, realtime=live))
        events: list[dict] = []
        pipeline = Pipeline(config, FileSource(path, config.source), [events.append], backend=None)
        service = pipeline._events.emotion.service
        before = (service.encoded_ahead, service.encoded_after)
        pipeline.run()
        runs[live] = ([e for e in events if e["type"] == "utterance"],
                      (service.encoded_ahead - before[0], service.encoded_after - before[1]))
    (after_end, (ahead_0, late_0)), (in_hangover, (ahead_1, late_1)) = runs[False], runs[True]
    assert len(after_end) == len(in_hangover) >= 6
    for a, b in zip(after_end, in_hangover, strict=True):
        assert a["emotion"]["label"] == b["emotion"]["label"], a["utterance_id"]
        for k, v in a["emotion"]["scores"].items():
            assert b["emotion"]["scores"][k] == pytest.approx(v, abs=1e-5)
        assert "encoder_ahead" in b["latency_ms"] and "encoder_ahead" not in a["latency_ms"]
    # Read at full speed: one pass per turn after its end. Live: one per pause not cancelled in time
    # (at least one per turn), and no turn encoded again at its end.
    assert (ahead_0, late_0) == (0, len(after_end))
    assert ahead_1 >= len(in_hangover) and late_1 == 0
