"""``python -m training.channels``: how the packaged emotion models hold up when the sound changes.

A desktop microphone may record far quieter than the corpora, a call arrives through a telephone
line, a room adds noise. This scores exported models (by default the packaged ``default`` and
``audio``) on the same clips under each such condition, through ``python -m training evaluate``'s
code path (:func:`training.evaluate.evaluate`), and writes ``training/results/channels.{md,json}``.

The clips are the 108 four-class clips of the two demo-voices actors, the only voices no
packaged model was trained on (:func:`training.default_report.held_out_clips`); another manifest
can be given. Each condition's copies are written as 16-bit WAV (what a recording holds) into a
temporary folder; noise is seeded, so a rerun gives the same figures.

Conditions (``--conditions``, comma-separated): ``clean``; ``gain:DB`` (the level scaled by DB
decibels, e.g. ``gain:-20``; peaks limited, never clipped); ``telephone`` (8 kHz, 300-3400 Hz);
``telephone-mulaw`` (with G.711 mu-law); ``noise:DB`` (pink noise at DB dB signal-to-noise).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .data import REPO, Utterance, read_manifest, write_manifest

if TYPE_CHECKING:
    from realtime_ser.config import PipelineConfig

MODELS = REPO / "realtime_ser" / "data" / "models"
OUT = REPO / "training" / "results"
DEFAULT_CONDITIONS = ("clean", "gain:-30", "gain:-20", "gain:-12", "gain:-6", "gain:6", "telephone",
                      "telephone-mulaw", "noise:20", "noise:10")

Transform = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


def condition(spec: str) -> Transform:
    """The transform a condition names; ``ValueError`` saying what is allowed otherwise."""
    from . import augment

    kind, _, arg = spec.partition(":")
    if kind in ("clean", "telephone", "telephone-mulaw") and not arg:
        if kind == "clean":
            return lambda x, sr, rng: x
        mu = kind == "telephone-mulaw"
        return lambda x, sr, rng: augment.telephone(x, sr, mu_law=mu)
    if kind in ("gain", "noise") and arg:
        try:
            db = float(arg)
        except ValueError:
            raise ValueError(f"condition {spec!r}: {arg!r} is not a number of decibels") from None
        if kind == "gain":
            if not -60 <= db <= 20:
                raise ValueError(f"condition {spec!r}: the gain must be -60..20 dB")
            return lambda x, sr, rng: augment.apply_gain(x, db) if db > 0 else x * np.float32(10 ** (db / 20))
        return lambda x, sr, rng: augment.add_noise(x, db, rng, kind="pink")
    raise ValueError(f"unknown condition {spec!r}; allowed: clean, gain:DB, telephone, telephone-mulaw, noise:DB")


def transformed_manifest(manifest_path: Path, spec: str, folder: Path, seed: int = 0) -> Path:
    """A copy of ``manifest_path`` whose clips went through ``spec``, as 16-bit WAVs in ``folder``."""
    import soundfile as sf

    transform = condition(spec)
    manifest = read_manifest(manifest_path, require_audio=True)
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, u in enumerate(manifest.utterances):
        src = manifest.audio_path(u)
        assert src is not None
        x, rate = sf.read(src, dtype="float32", always_2d=True)
        y = np.clip(transform(x.mean(axis=1), rate, rng), -1.0, 1.0)
        path = folder / f"{i:05d}.wav"
        sf.write(path, y, rate, subtype="PCM_16")
        rows.append(Utterance(u.dialogue_id, u.utt_index, u.speaker, u.label, u.text, str(path), u.extra))
    return write_manifest(folder / "manifest.csv", rows)


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (results do not name the machine's folders)."""
    full = path.resolve()
    return str(full.relative_to(REPO)) if full.is_relative_to(REPO) else str(path)


def speech_found(manifest_path: Path, pipeline: PipelineConfig | None = None) -> tuple[dict[str, Any], Path]:
    """What the segmenter (``pipeline``'s; by default the one live and in training) keeps of each
    clip: how many clips it finds no speech in at all, and the mean share of a clip's samples kept;
    and a manifest of the clips it found speech in (``heard.csv`` beside ``manifest_path``). Live, a
    clip without speech is no utterance at all; scored anyway, it is silence, which the models call
    *sad*, and the quietest clips are mostly sad ones: the figures on the heard clips are the honest ones."""
    import soundfile as sf

    from realtime_ser.features.segment import utterance_audio

    manifest = read_manifest(manifest_path)
    kept = []
    heard = []
    for u in manifest.utterances:
        path = manifest.audio_path(u)
        if path is None:
            raise ValueError(f"{manifest_path}: {u.dialogue_id} has no audio file")
        total = sf.info(str(path)).frames
        kept.append(sum(len(x) for x in utterance_audio(path, pipeline)) / max(1, total))
        if kept[-1] > 0:
            heard.append(Utterance(u.dialogue_id, u.utt_index, u.speaker, u.label, u.text, str(path), u.extra))
    found = {"clips": len(kept), "no_speech": int(sum(k == 0 for k in kept)),
             "kept_mean": float(np.mean(kept)) if kept else 0.0}
    return found, write_manifest(manifest_path.parent / "heard.csv", heard)


def run(models: Sequence[Path], manifest: Path, conditions: Sequence[str], seed: int = 0,
        overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Every model's figures under every condition; ``overrides`` (``section.key=value``, as ``realtime-ser
    run --set``) change the segmentation the clips are cut with, e.g. ``vad.auto_gain_dbfs=-35``."""
    from realtime_ser.config import PipelineConfig, apply_overrides

    from .evaluate import evaluate

    for spec in conditions:
        condition(spec)  # refuse a bad condition before any work
    pipeline = apply_overrides(PipelineConfig(), list(overrides)).validate()
    results: dict[str, Any] = {"manifest": str(manifest), "seed": seed, "conditions": list(conditions),
                               "settings": list(overrides), "models": {}, "speech_found": {}}
    with tempfile.TemporaryDirectory(prefix="channels-") as tmp:
        for spec in conditions:
            copy = transformed_manifest(manifest, spec, Path(tmp) / spec.replace(":", "_"), seed)
            results["speech_found"][spec], heard = speech_found(copy, pipeline)
            for model in models:
                started = time.perf_counter()
                report = evaluate(model, copy, pipeline=pipeline)
                entry = {"metrics": report["metrics"], "modalities": report.get("modalities", {}),
                         "audio_weight": report.get("audio_weight"), "seconds": round(time.perf_counter() - started, 1)}
                if results["speech_found"][spec]["no_speech"]:  # the features are cached: a cheap second look
                    entry["heard_metrics"] = evaluate(model, heard, pipeline=pipeline)["metrics"]
                name, shown = report["model"]["name"], _shown(model)
                if results["models"].get(name, {}).get("dir", shown) != shown:
                    name = f"{name} ({shown})"  # two models of one name: told apart by folder
                card = results["models"].setdefault(name, {
                    "dir": shown, "version": report["model"]["version"], "conditions": {}})
                card["conditions"][spec] = entry
                m = report["metrics"]
                h = entry.get("heard_metrics", m)
                print(f"{name:8s} {spec:16s} UAR {100 * m['uar']:5.1f}%  ECE {m['ece']:.3f}  "
                      f"clips with speech found: UAR {100 * h['uar']:5.1f}% (n={h['n']})", flush=True)
    return results


def markdown(results: dict[str, Any]) -> str:
    lines = ["# The packaged models under level and channel changes", "",
             f"Written by `python -m training.channels`. Clips: {results['manifest']}; each",
             "condition applied to every clip, written as 16-bit WAV, scored through `python -m training evaluate`'s",
             "code path. UAR and WA in %, ECE over the clips (15 bins); *audio weight*: the mean weight the",
             "fusion gave the voice (1 = fully trusted; only for fused models with the audio gate).", ""]
    if results.get("settings"):
        lines += ["Segmentation settings changed from the defaults: " +
                  ", ".join(f"`{s}`" for s in results["settings"]) + ".", ""]
    found = results.get("speech_found", {})
    if found:
        lines += ["## What the voice-activity detector keeps", "",
                  "The default segmenter (webrtcvad, as live and in training) on each copy: a clip in which it finds",
                  "no speech reaches the model as silence (live, it is no utterance at all), which the models call",
                  "*sad*; the quietest clips are mostly sad ones, so the UAR over all clips flatters them there.",
                  "The column *on the clips with speech found* scores only the clips the detector heard.", "",
                  "| condition | clips with no speech found | share of a clip's samples kept, mean % |",
                  "|---|---:|---:|"]
        lines += [f"| {spec} | {f['no_speech']} of {f['clips']} | {100 * f['kept_mean']:.0f} |"
                  for spec, f in found.items()]
        lines.append("")
    for name, card in results["models"].items():
        conds = card["conditions"]
        n = conds[results["conditions"][0]]["metrics"]["n"]
        lines += [f"## `{name}` ({card['version']}), n = {n} clips", "",
                  "| condition | UAR % | WA % | ECE | UAR % on the clips with speech found (n) | audio branch UAR % | "
                  "audio weight | recall: neutral, happy, sad, angry |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        for spec in results["conditions"]:
            c = conds[spec]
            m = c["metrics"]
            audio = c["modalities"].get("audio")
            rec = ", ".join("-" if v is None else f"{100 * v:.0f}" for v in m["per_class_recall"].values())
            weight = "" if c["audio_weight"] is None else f"{c['audio_weight']:.2f}"
            branch = "" if audio is None else f"{100 * audio['uar']:.1f}"
            h = c.get("heard_metrics", m)
            lines.append(f"| {spec} | {100 * m['uar']:.1f} | {100 * m['weighted_accuracy']:.1f} | {m['ece']:.3f} | "
                         f"{100 * h['uar']:.1f} ({h['n']}) | {branch} | {weight} | {rec} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.channels", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, action="append", default=None, metavar="DIR",
                   help="exported model directory (repeatable; default: the packaged default and audio models)")
    p.add_argument("--manifest", type=Path, default=None, metavar="CSV",
                   help="clips to score (default: the 4-class clips of the two demo-voices actors)")
    p.add_argument("--conditions", default=",".join(DEFAULT_CONDITIONS),
                   help="comma-separated: clean, gain:DB, telephone, telephone-mulaw, noise:DB (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise (default: %(default)s)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="a segmentation setting to cut the clips with, as `realtime-ser run --set` "
                        "(repeatable; e.g. vad.auto_gain_dbfs=-35)")
    p.add_argument("--out", type=Path, default=OUT / "channels",
                   help="writes OUT.json and OUT.md (default: %(default)s)")
    args = p.parse_args(argv)
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    try:
        for spec in conditions:
            condition(spec)
        from realtime_ser.config import PipelineConfig, apply_overrides

        apply_overrides(PipelineConfig(), args.overrides).validate()
    except ValueError as exc:  # a ConfigError is one
        p.error(str(exc))
    models = args.model or [MODELS / "default", MODELS / "audio"]
    manifest = args.manifest
    with tempfile.TemporaryDirectory(prefix="channels-clips-") as tmp:
        if manifest is None:
            from .default_report import held_out_clips

            manifest = held_out_clips(Path(tmp) / "held-out-demo-actors.csv")
        results = run(models, manifest, conditions, args.seed, args.overrides)
    if args.manifest is None:
        results["manifest"] = "the 4-class clips of the two demo-voices actors (training.default_report.held_out_clips)"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    args.out.with_suffix(".md").write_text(markdown(results) + "\n", encoding="utf-8")
    print(f"wrote {args.out.with_suffix('.md')} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
