"""Whisper's speech encoder as the emotion model's acoustic front end (realtime_ser.features.speech).

The encoder tests need the prepared Whisper base (``realtime-ser models prepare``, which
``make test`` runs) and ctranslate2; they skip with the command to run where it is absent.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from realtime_ser.asr import whisper_backend as wb
from realtime_ser.errors import ModelError
from realtime_ser.features import speech

RATE = speech.SAMPLE_RATE


def _tone(seconds: float, f0: float = 180.0, seed: int = 0) -> np.ndarray:
    """A buzzy harmonic tone with a little noise: speech-like enough for an encoder."""
    t = np.arange(int(seconds * RATE)) / RATE
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 12))
    x = 0.2 * x / np.abs(x).max() + 0.01 * np.random.default_rng(seed).standard_normal(len(t))
    return (x * 32767).astype(np.int16)


@pytest.fixture(scope="module")
def encoder() -> speech.SpeechEncoder:
    if importlib.util.find_spec("ctranslate2") is None:
        pytest.skip("needs ctranslate2: pip install 'realtime-ser[whisper]'")
    try:
        return speech.load(threads=2)
    except ModelError as exc:
        pytest.skip(f"needs the prepared Whisper base: realtime-ser models prepare ({exc})")


def test_log_mel_matches_whisper_reference() -> None:
    """Our numpy log-Mel is faster-whisper's (Whisper's own front end), so decoding reads what it was trained on."""
    fw = pytest.importorskip("faster_whisper.feature_extractor")
    x = _tone(3.2).astype(np.float32) / 32768
    window = np.zeros(10 * RATE, np.float32)
    window[: len(x)] = x
    ref = fw.FeatureExtractor(80)(window, padding=160)[:, : 10 * 100]
    ours = speech.log_mel(window)
    assert ours.shape == (80, 1000)
    assert np.abs(ours - ref).max() < 1e-4


def test_log_mel_of_silence_and_tiny_input_is_finite() -> None:
    for x in (np.zeros(RATE, np.float32), np.zeros(10, np.float32), np.ones(5, np.float32)):
        m = speech.log_mel(x)
        assert m.shape[0] == 80 and np.isfinite(m).all()


def test_config_is_checked_and_keyed() -> None:
    with pytest.raises(ValueError, match="window_s"):
        speech.SpeechEncoderConfig(window_s=31)
    with pytest.raises(ValueError, match="pooling"):
        speech.SpeechEncoderConfig(pooling="max")
    a = speech.SpeechEncoderConfig()
    assert a.key("x" * 64) == speech.SpeechEncoderConfig().key("x" * 64)
    assert a.key("x" * 64) != speech.SpeechEncoderConfig(window_s=15).key("x" * 64)
    assert a.key("x" * 64) != a.key("y" * 64), "the weights are part of the key"


def test_missing_model_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        speech.load(tmp_path / "nothing-here")


def test_states_cover_only_the_utterance(encoder: speech.SpeechEncoder) -> None:
    short, longer = _tone(1.0), _tone(12.5, 220.0)
    a, b = encoder.encode([short, longer])
    assert a.states.shape == (50, encoder.d_model)
    # 12.5 s spans two 10 s windows: 500 + 125 frames of 20 ms.
    assert b.states.shape == (625, encoder.d_model)
    assert a.windows is None


def test_batching_does_not_change_vectors(encoder: speech.SpeechEncoder) -> None:
    clips = [_tone(0.7, 150.0), _tone(2.3, 200.0, seed=1), _tone(4.0, 260.0, seed=2)]
    together = encoder.embed(clips)
    alone = np.stack([encoder.embed([c])[0] for c in clips])
    assert together.shape == (3, encoder.dim)
    np.testing.assert_allclose(together, alone, atol=1e-3)
    assert np.abs(together[0] - together[2]).max() > 1e-2, "different audio, different vectors"


def test_int16_and_float_input_agree(encoder: speech.SpeechEncoder) -> None:
    x = _tone(1.5)
    np.testing.assert_allclose(encoder.embed([x])[0], encoder.embed([x.astype(np.float32) / 32768])[0], atol=1e-4)


def test_kept_windows_decode(encoder: speech.SpeechEncoder) -> None:
    """The encoder output it keeps is what Whisper's decoder reads (one pass serves both)."""
    (enc,) = encoder.encode([_tone(2.0)], keep_windows=True)
    assert enc.windows is not None and tuple(enc.windows.shape) == (1, 500, encoder.d_model)
    result = encoder.model.generate(enc.windows, [[50258, 50259, 50359, 50363]], beam_size=1, max_length=20)
    assert result and isinstance(result[0].sequences_ids[0], list)


def test_the_model_is_loaded_once_per_process(encoder: speech.SpeechEncoder) -> None:
    assert speech.load(threads=2) is encoder
    assert encoder.name == wb.MODEL_NAME
    assert len(encoder.model_sha256) == 64


# -- the emotion model's audio front end (realtime_ser.features.audio) ---------------------------


def test_front_end_checks_the_card_and_names_the_fix(encoder: speech.SpeechEncoder) -> None:
    from realtime_ser.features.audio import AudioFrontEnd

    front = AudioFrontEnd.create("speech")
    card = front.card()
    assert card["kind"] == "speech" and card["dim"] == encoder.dim
    assert AudioFrontEnd.for_card(card).key() == front.key()
    with pytest.raises(ModelError, match="Whisper model it was trained with"):
        AudioFrontEnd.for_card({**card, "key": "0123456789ab"}, where="model x")
    with pytest.raises(ModelError, match="unknown"):
        AudioFrontEnd.for_card({**card, "kind": "wav2vec"})
    both = AudioFrontEnd.create("speech+acoustic")
    x = _tone(1.2)
    v = both.extract([x])[0]
    assert v.shape == (encoder.dim + both.acoustic.dim,)  # type: ignore[union-attr]
    np.testing.assert_allclose(v[: encoder.dim], front.extract([x])[0], atol=1e-5)


def test_front_end_pools_encoder_output_it_is_given(encoder: speech.SpeechEncoder) -> None:
    """One encoder pass serves two consumers: output computed elsewhere with the same settings is
    pooled as it is, and anything else is encoded again."""
    from realtime_ser.features.audio import AudioFrontEnd

    front = AudioFrontEnd.create("speech")
    a, b = _tone(1.0, 150.0), _tone(2.0, 230.0)
    (given,) = encoder.encode([a])
    calls = encoder.calls
    out = front.extract([a, b], [given, None])
    assert encoder.calls == calls + 1, "only b is encoded"
    np.testing.assert_allclose(out[0], speech.SpeechEncoder.pool(given.states), atol=1e-6)
    other = speech.EncodedUtterance(given.states * 0, None, 1.0, key="another-window")
    out2 = front.extract([a], [other])
    assert np.abs(out2[0]).sum() > 0, "output of other settings is not used"


def test_scale_to_level_sets_the_active_level_whatever_the_input_gain() -> None:
    x = _tone(1.5).astype(np.float32) / 32768.0
    x[:8000] *= 0.001  # a near-silent lead-in is not part of the active level
    outs = [speech.scale_to_level(x * g, -26.0) for g in (1.0, 0.03, 0.001)]
    for y in outs:
        active = y[8000:].astype(np.float64)
        assert 10 * np.log10(np.mean(active**2)) == pytest.approx(-26.0, abs=0.2)
        np.testing.assert_allclose(y, outs[0], atol=1e-5)
    loud = speech.scale_to_level(x, -6.0)
    assert np.abs(loud).max() <= speech.MAX_PEAK + 1e-6, "peaks are held below full scale"
    for silence in (np.zeros(RATE, np.float32), np.zeros(0, np.float32), np.zeros(100, np.float32)):
        assert speech.scale_to_level(silence, -26.0) is silence
    short = speech.scale_to_level(x[8000:8100], -26.0)  # shorter than one frame
    assert 10 * np.log10(np.mean(short.astype(np.float64) ** 2)) == pytest.approx(-26.0, abs=0.2)


def test_level_setting_is_checked_and_keyed_apart() -> None:
    with pytest.raises(ValueError, match="level_dbfs"):
        speech.SpeechEncoderConfig(level_dbfs=0)
    plain = speech.SpeechEncoderConfig()
    assert plain.level_dbfs is None
    # An unset level leaves the key as it was before the setting existed (packaged models keep theirs).
    import hashlib
    import json

    before = json.dumps({"window_s": 10, "pooling": "mean_std", "compute_type": "int8", "version": "1",
                         "model": "x" * 64}, sort_keys=True, separators=(",", ":"))
    assert plain.key("x" * 64) == hashlib.sha256(before.encode()).hexdigest()[:12]
    level = speech.SpeechEncoderConfig(level_dbfs=-26)
    assert level.level_dbfs == -26.0 and level == speech.SpeechEncoderConfig(level_dbfs=-26.0)
    assert level.key("x" * 64) != plain.key("x" * 64)


def test_a_level_front_end_hears_a_quiet_copy_as_the_same_voice(encoder: speech.SpeechEncoder) -> None:
    """With the level setting, a copy 30 dB quieter pools to (almost) the same vector; without it,
    it does not. The setting travels in the model card."""
    from realtime_ser.features.audio import AudioFrontEnd

    x = _tone(1.5).astype(np.float32) / 32768.0
    quiet = x * np.float32(10 ** (-30 / 20))
    level = AudioFrontEnd.create("speech", speech_config=speech.SpeechEncoderConfig(level_dbfs=-26))
    plain = AudioFrontEnd.create("speech")
    a, b = level.extract([x, quiet])
    c, d = plain.extract([x, quiet])
    assert np.abs(a - b).max() < 0.1 * np.abs(c - d).max()
    card = level.card()
    assert card["speech"]["config"]["level_dbfs"] == -26.0
    again = AudioFrontEnd.for_card(card)
    assert again.key() == level.key() != plain.key()
    np.testing.assert_allclose(again.extract([quiet])[0], b, atol=1e-5)
    # The recognizer's encoder pass (plain settings) is not pooled by a level front end.
    (given,) = encoder.encode([x])
    assert plain.shares(given) and not level.shares(given)


def test_the_trainer_and_the_evaluator_follow_the_level_setting(encoder: speech.SpeechEncoder) -> None:
    """The trainer's features carry the level into the card, keyed apart in the feature cache; the
    evaluator builds its front end from the card's level, so it computes what the model was trained on."""
    from types import SimpleNamespace

    from training.evaluate import extractor_for
    from training.features import FeatureExtractor, FeatureSettings

    level = FeatureExtractor(FeatureSettings(audio="speech", speech_level_dbfs=-26))
    plain = FeatureExtractor(FeatureSettings(audio="speech"))
    assert level.audio_key() != plain.audio_key()
    card = level.settings_card(("audio",))["audio"]
    assert card["speech"]["config"]["level_dbfs"] == -26.0
    seen: list[object] = []
    model = SimpleNamespace(card=SimpleNamespace(features={"audio": card}, modalities=("audio",)),
                            check_features=lambda audio, text: seen.append(audio))
    extractor = extractor_for(model)  # type: ignore[arg-type]
    assert seen == [card["key"]] and extractor.front_end.speech.config.level_dbfs == -26.0  # type: ignore[union-attr]


# -- a shallower encoder (SpeechEncoderConfig.encoder_layers) ------------------------------------


def test_depth_setting_is_checked_and_keyed_apart() -> None:
    for bad in (-1, 65, 2.5, True, "4"):
        with pytest.raises(ValueError, match="encoder_layers must be a whole number 0..64"):
            speech.SpeechEncoderConfig(encoder_layers=bad)  # type: ignore[arg-type]
    plain = speech.SpeechEncoderConfig(level_dbfs=-26)
    assert plain.key("x" * 64) == speech.SpeechEncoderConfig(level_dbfs=-26, encoder_layers=0).key("x" * 64)
    four = speech.SpeechEncoderConfig(level_dbfs=-26, encoder_layers=4)
    three = speech.SpeechEncoderConfig(encoder_layers=3)
    assert len({four.key("x" * 64), plain.key("x" * 64), three.key("x" * 64)}) == 3


def test_a_shallower_encoder_is_the_whole_one_cut_short(encoder: speech.SpeechEncoder) -> None:
    """All six layers through the rewritten model give the encoder's own vectors; four give other
    ones, from a model of their own that never serves the recognizer; more layers than the model has
    is refused with the count."""
    from realtime_ser.features.audio import AudioFrontEnd

    x = [_tone(1.2, 150.0), _tone(2.5, 220.0, seed=1)]
    six = speech.load(threads=2, config=speech.SpeechEncoderConfig(encoder_layers=6))
    assert six.model is not encoder.model and six.key() != encoder.key()
    np.testing.assert_allclose(six.embed(x), encoder.embed(x), atol=1e-4)
    four = speech.load(threads=2, config=speech.SpeechEncoderConfig(encoder_layers=4))
    assert speech.load(threads=2, config=speech.SpeechEncoderConfig(encoder_layers=4)) is four
    v4, v6 = four.embed(x), encoder.embed(x)
    assert v4.shape == v6.shape and np.all(np.isfinite(v4))
    assert np.abs(v4 - v6).max() > 0.1
    front = AudioFrontEnd.create("speech", speech_config=speech.SpeechEncoderConfig(encoder_layers=4))
    (given,) = encoder.encode([x[0]])
    assert not front.shares(given), "the recognizer's full pass is not what a shallower model reads"
    np.testing.assert_allclose(front.extract([x[0]], [given])[0], v4[0], atol=1e-5)
    card = front.card()
    assert card["speech"]["config"]["encoder_layers"] == 4
    assert AudioFrontEnd.for_card(card).key() == front.key()
    with pytest.raises(ModelError, match="encoder_layers=7, but the speech encoder in .* has 6 layers"):
        speech.load(threads=2, config=speech.SpeechEncoderConfig(encoder_layers=7))


def test_a_model_file_it_cannot_read_is_refused_with_the_reason(tmp_path: Path) -> None:
    import struct

    def header(version: int) -> bytes:
        name = b"WhisperSpec\0"
        return struct.pack("<I", version) + struct.pack("<H", len(name)) + name + struct.pack("<I", 3)

    (tmp_path / "model.bin").write_bytes(header(99) + struct.pack("<I", 0))
    with pytest.raises(ModelError, match="format version 99"):
        speech.truncated_model_files(tmp_path, 2)
    var = b"encoder/layer_0/w\0"
    record = struct.pack("<H", len(var)) + var + struct.pack("<B", 1) + struct.pack("<I", 4) + b"\x04" + struct.pack(
        "<I", 8)
    (tmp_path / "model.bin").write_bytes(header(6) + struct.pack("<I", 1) + record + b"\0" * 3)
    with pytest.raises(ModelError, match="ends inside variable 'encoder/layer_0/w'"):
        speech.truncated_model_files(tmp_path, 1)
    (tmp_path / "model.bin").write_bytes(header(6) + struct.pack("<I", 1) + record + b"\0" * 8 + struct.pack("<I", 0))
    assert speech.truncated_model_files(tmp_path, 1)["model.bin"] == (tmp_path / "model.bin").read_bytes()
    with pytest.raises(ModelError, match="has 1 layers"):
        speech.truncated_model_files(tmp_path, 2)


def test_the_trainer_and_the_evaluator_follow_the_depth_setting(encoder: speech.SpeechEncoder) -> None:
    from types import SimpleNamespace

    from training.evaluate import extractor_for
    from training.features import FeatureExtractor, FeatureSettings

    four = FeatureExtractor(FeatureSettings(audio="speech", speech_level_dbfs=-26, speech_layers=4))
    level = FeatureExtractor(FeatureSettings(audio="speech", speech_level_dbfs=-26))
    assert four.audio_key() != level.audio_key()
    card = four.settings_card(("audio",))["audio"]
    assert card["speech"]["config"]["encoder_layers"] == 4
    model = SimpleNamespace(card=SimpleNamespace(features={"audio": card}, modalities=("audio",)),
                            check_features=lambda audio, text: None)
    extractor = extractor_for(model)  # type: ignore[arg-type]
    config = extractor.front_end.speech.config  # type: ignore[union-attr]
    assert config.encoder_layers == 4 and config.level_dbfs == -26.0


def test_extra_depths_follow_the_main_vector_and_never_take_the_recognizers_pass(
        encoder: speech.SpeechEncoder) -> None:
    from realtime_ser.features.audio import AudioFrontEnd

    config = speech.SpeechEncoderConfig(level_dbfs=-26.0)
    front = AudioFrontEnd.create("speech", threads=2, speech_config=config, extra_layers=[1, 3])
    plain = AudioFrontEnd.create("speech", threads=2, speech_config=config)
    one = speech.load(threads=2, config=speech.SpeechEncoderConfig(level_dbfs=-26.0, encoder_layers=1))
    three = speech.load(threads=2, config=speech.SpeechEncoderConfig(level_dbfs=-26.0, encoder_layers=3))
    x = [_tone(1.5, 150.0), _tone(2.5, 220.0, seed=1)]
    assert front.dim == 3 * plain.dim and front.key() != plain.key()
    v = front.extract(x)
    d = plain.dim
    np.testing.assert_allclose(v[:, :d], plain.extract(x), atol=1e-6)
    np.testing.assert_allclose(v[:, d : 2 * d], one.embed(x), atol=1e-6)
    np.testing.assert_allclose(v[:, 2 * d :], three.embed(x), atol=1e-6)
    assert np.abs(v[:, d : 2 * d] - v[:, :d]).max() > 0.1, "a shallower encoder gives other vectors"
    # The main encoder's pass from elsewhere (the recognizer's) is used; the extra depths run anyway.
    given = plain.speech.encode(x)  # type: ignore[union-attr]
    calls = one.calls
    assert front.shares(given[0])
    np.testing.assert_allclose(front.extract(x, given), v, atol=1e-6)
    assert one.calls == calls + 1
    # A pass ahead (the emotion stage's own) computes the extra depths too: nothing is left to run.
    ahead = front.encode(x)
    calls = (one.calls, three.calls)
    np.testing.assert_allclose(front.extract(x, ahead), v, atol=1e-6)
    assert (one.calls, three.calls) == calls
    card = front.card()
    assert [e["config"]["encoder_layers"] for e in card["speech"]["extra"]] == [1, 3]
    assert AudioFrontEnd.for_card(card).key() == front.key()
    assert "extra" not in plain.card()["speech"], "a front end without extra depths keeps its card and key"
    for bad, match in (([0], "1..64"), ([2, 2], "repeat"), ([True], "whole number")):
        with pytest.raises(ValueError, match=match):
            AudioFrontEnd.create("speech", speech_config=config, extra_layers=bad)
    with pytest.raises(ValueError, match="need the speech front end"):
        AudioFrontEnd.create("acoustic", extra_layers=[1])
    broken = {**card, "speech": {**card["speech"], "extra": [{"config": {"encoder_layers": "one"}}]}}
    with pytest.raises(ModelError, match="features.audio.speech.config or .extra is missing or invalid"):
        AudioFrontEnd.for_card(broken)


def test_the_trainer_caches_each_depth_apart_and_the_evaluator_follows_the_card(
        encoder: speech.SpeechEncoder, tmp_path: Path) -> None:
    import wave
    from types import SimpleNamespace

    from realtime_ser.features.cache import FeatureCache
    from training.evaluate import extractor_for
    from training.features import FeatureExtractor, FeatureSettings

    with pytest.raises(ValueError, match="need the speech front end"):
        FeatureSettings(audio="acoustic", speech_extra_layers=(1,))
    path = tmp_path / "clip.wav"
    pad = np.zeros(RATE // 2, np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(np.concatenate([pad, _tone(1.5), pad]).tobytes())
    cache = FeatureCache(tmp_path / "cache")
    both = FeatureExtractor(FeatureSettings(audio="speech", speech_level_dbfs=-26, speech_extra_layers=[1]),
                            cache=cache)
    one = FeatureExtractor(FeatureSettings(audio="speech", speech_level_dbfs=-26, speech_layers=1), cache=cache)
    main = FeatureExtractor(FeatureSettings(audio="speech", speech_level_dbfs=-26), cache=cache)
    assert both.audio_key("speech@1") == one.audio_key() and both.audio_key("speech") == main.audio_key()
    assert both.audio_key() not in (one.audio_key(), main.audio_key())
    v = both.audio_files([path])
    np.testing.assert_allclose(v[0], np.concatenate([main.audio_files([path])[0], one.audio_files([path])[0]]),
                               atol=1e-6)
    card = both.settings_card(("audio",))["audio"]
    model = SimpleNamespace(card=SimpleNamespace(features={"audio": card}, modalities=("audio",)),
                            check_features=lambda audio, text: None)
    extractor = extractor_for(model)  # type: ignore[arg-type]
    assert extractor.settings.speech_extra_layers == (1,) and extractor.front_end.key() == both.front_end.key()


def test_extra_depths_may_run_a_shorter_window_and_the_card_carries_it(
        encoder: speech.SpeechEncoder, tmp_path: Path) -> None:
    from types import SimpleNamespace

    from realtime_ser.features.audio import AudioFrontEnd
    from realtime_ser.features.cache import FeatureCache
    from training.evaluate import extractor_for
    from training.features import FeatureExtractor, FeatureSettings

    config = speech.SpeechEncoderConfig(level_dbfs=-26.0)
    short = AudioFrontEnd.create("speech", threads=2, speech_config=config, extra_layers=[1], extra_window_s=4)
    same = AudioFrontEnd.create("speech", threads=2, speech_config=config, extra_layers=[1])
    assert short.speech is not None and short.speech.config.window_s == 10, "the main encoder keeps its window"
    assert [e.config.window_s for e in short.extra] == [4] and [e.config.window_s for e in same.extra] == [10]
    assert short.key() != same.key(), "the window is part of what identifies the vectors"
    one4 = speech.load(threads=2, config=speech.SpeechEncoderConfig(level_dbfs=-26.0, encoder_layers=1, window_s=4))
    x = [_tone(1.5, 150.0), _tone(5.5, 220.0, seed=1)]  # the second spans two 4 s windows
    v, w = short.extract(x), same.extract(x)
    d = short.dim // 2
    np.testing.assert_allclose(v[:, :d], w[:, :d], atol=1e-6)
    np.testing.assert_allclose(v[:, d:], one4.embed(x), atol=1e-6)
    assert np.abs(v[:, d:] - w[:, d:]).max() > 1e-3, "less padding in the window changes the first layer's vector"
    np.testing.assert_allclose(short.extract(x, short.encode(x)), v, atol=1e-6)
    card = short.card()
    assert [e["config"]["window_s"] for e in card["speech"]["extra"]] == [4]
    assert AudioFrontEnd.for_card(card).key() == short.key()
    two = AudioFrontEnd.create("speech", threads=2, speech_config=config, extra_layers=[1, 2], extra_window_s=4).card()
    two["speech"]["extra"][1]["config"]["window_s"] = 10
    with pytest.raises(ModelError, match="windows differ"):
        AudioFrontEnd.for_card(two)

    # The trainer: the setting reaches the extra part only, whose cache is apart; the evaluator follows the card.
    cache = FeatureCache(tmp_path / "cache")
    trained = FeatureExtractor(FeatureSettings(audio="speech", speech_level_dbfs=-26, speech_extra_layers=[1],
                                               speech_extra_window_s=4), cache=cache)
    plain = FeatureExtractor(FeatureSettings(audio="speech", speech_level_dbfs=-26, speech_extra_layers=[1]),
                             cache=cache)
    assert trained.audio_key("speech") == plain.audio_key("speech")
    assert trained.audio_key("speech@1") != plain.audio_key("speech@1")
    assert trained.front_end.key() == short.key()
    model = SimpleNamespace(card=SimpleNamespace(features={"audio": trained.settings_card(("audio",))["audio"]},
                                                 modalities=("audio",)),
                            check_features=lambda audio, text: None)
    extractor = extractor_for(model)  # type: ignore[arg-type]
    assert extractor.settings.speech_extra_window_s == 4 and extractor.front_end.key() == short.key()
    for bad in (-1, 31, True, 2.5):
        with pytest.raises(ValueError, match="speech_extra_window_s must be"):
            FeatureSettings(audio="speech", speech_extra_layers=(1,), speech_extra_window_s=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="none are set"):
        FeatureSettings(audio="speech", speech_extra_window_s=4)
