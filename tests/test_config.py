from __future__ import annotations

from pathlib import Path

import pytest

from realtime_ser.config import PipelineConfig, apply_overrides, load, to_dict
from realtime_ser.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_shipped_default_toml_equals_dataclass_defaults() -> None:
    assert to_dict(load(REPO / "configs" / "default.toml")) == to_dict(PipelineConfig())


def test_partial_file_overrides_and_keeps_the_rest(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[vad]\nhangover_ms = 400\n[source]\nsplit_channels = true\n")
    cfg = load(p)
    assert cfg.vad.hangover_ms == 400 and cfg.source.split_channels
    assert cfg.vad.aggressiveness == PipelineConfig().vad.aggressiveness


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[vad]\nhangover = 3\n",
         r"unknown key vad\.hangover; allowed in \[vad\]: detector, threshold, aggressiveness"),
        ("[vda]\n", r"unknown section \[vda\]; allowed: source, vad, asr, output"),
        ("[vad]\nhangover_ms = 'long'\n", "vad.hangover_ms must be an integer"),
        ("[vad]\naggressiveness = 7\n", "use 0, 1, 2 or 3"),
        ("[source]\nframe_ms = 25\n", r"use one of \[10, 20, 30\]"),
        ("[asr]\nbackend = 'kaldi'\n", "use one of pocketsphinx, vosk, none"),
        ("vad = [", "not valid TOML"),
    ],
)
def test_bad_files_name_what_is_allowed(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load(p)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load("/nonexistent/x.toml")


def test_overrides_coerce_and_validate() -> None:
    cfg = apply_overrides(PipelineConfig(), ["vad.hangover_ms=400", "source.realtime=true", "asr.backend=none"])
    assert cfg.vad.hangover_ms == 400 and cfg.source.realtime and cfg.asr.backend == "none"
    with pytest.raises(ConfigError, match="SECTION.KEY=VALUE"):
        apply_overrides(PipelineConfig(), ["hangover=3"])
    with pytest.raises(ConfigError, match="unknown key vad.nope"):
        apply_overrides(PipelineConfig(), ["vad.nope=1"])
    with pytest.raises(ConfigError, match="true or false"):
        apply_overrides(PipelineConfig(), ["source.realtime=maybe"])


def test_overrides_take_toml_strings_as_the_trainer_does() -> None:
    """``--set key="value"`` (the trainer's form) and ``--set key=value`` mean the same."""
    quoted = apply_overrides(PipelineConfig(), ['emotion.model="/tmp/my model"', "asr.backend='none'",
                                                'vad.hangover_ms="400"'])
    assert quoted.emotion.model == "/tmp/my model" and quoted.asr.backend == "none"
    assert quoted.vad.hangover_ms == 400
    plain = apply_overrides(PipelineConfig(), ["emotion.model=/tmp/my model", "asr.backend=none"])
    assert plain.emotion.model == quoted.emotion.model and plain.asr.backend == quoted.asr.backend
    # Not a TOML string: taken as written (a lone quote stays part of the value).
    assert apply_overrides(PipelineConfig(), ['emotion.model="/tmp/x']).emotion.model == '"/tmp/x'
    assert apply_overrides(PipelineConfig(), ['emotion.model="a"b"']).emotion.model == '"a"b"'


@pytest.mark.parametrize(("setting", "match"), [
    ("vad.auto_gain_dbfs=-70", r"use 0 \(off\) or -60..-10"),
    ("vad.auto_gain_dbfs=-3", r"use 0 \(off\) or -60..-10"),
    ("vad.auto_gain_max_db=0", "more than 0 and at most 60"),
    ("vad.auto_gain_max_db=90", "more than 0 and at most 60"),
])
def test_detector_gain_settings_are_checked(setting: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        apply_overrides(PipelineConfig(), [setting])


def test_detector_gain_off_keeps_the_segmentation_key_of_every_cache_and_model() -> None:
    from training.features import vad_key

    # The key the feature caches and the packaged models' training used before the setting existed.
    assert vad_key() == "4e2b4e54f47a"
    assert vad_key(apply_overrides(PipelineConfig(), ["vad.auto_gain_max_db=20"])) == "4e2b4e54f47a"
    on = vad_key(apply_overrides(PipelineConfig(), ["vad.auto_gain_dbfs=-35"]))
    assert on != "4e2b4e54f47a"
    assert vad_key(apply_overrides(PipelineConfig(), ["vad.auto_gain_dbfs=-35", "vad.auto_gain_max_db=20"])) != on


def test_release_memory_interval_is_checked() -> None:
    assert apply_overrides(PipelineConfig(), ["server.release_memory_s=0"]).server.release_memory_s == 0
    with pytest.raises(ConfigError, match="release_memory_s"):
        apply_overrides(PipelineConfig(), ["server.release_memory_s=-1"])
