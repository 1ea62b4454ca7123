"""One manifest format for every training corpus, label maps, and converters.

Manifest format
---------------
A UTF-8 CSV with the columns ``dialogue_id, utt_index, speaker, label, text, audio``
followed by any number of metadata columns (``corpus``, ``session``, ``script_id``,
``gender``, ``orig_label``, ...), which are kept in :attr:`Utterance.extra`.

- ``dialogue_id`` + ``utt_index``: the utterances of a dialogue are numbered
  ``0..n-1`` in time order. A clip that is not part of a conversation is a
  dialogue of one (``utt_index`` 0).
- ``speaker``: a speaker id, unique across the corpus (e.g. ``Ses01F`` for the
  female actor of IEMOCAP session 1). A line said by several people together
  names them all, joined by ``|`` (:data:`SPEAKER_SEP`).
- ``label``: the emotion class, or the empty string for an **unlabeled context
  turn**: a turn of a conversation whose emotion is not one of the classes
  (e.g. IEMOCAP ``fru`` in 4-class mode). It stays in the dialogue because it
  is context for its neighbours; training losses and metrics skip it.
- ``text``: the transcript (may be empty).
- ``audio``: the audio file, relative to the folder of the manifest; empty for
  text-only corpora.

Rows in error messages are counted like spreadsheet rows: the header is row 1,
the first utterance row 2.
"""

from __future__ import annotations

import ast
import csv
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

COLUMNS: tuple[str, ...] = ("dialogue_id", "utt_index", "speaker", "label", "text", "audio")
"""The required manifest columns, in the order they are written."""

EXTRA_ORDER: tuple[str, ...] = ("corpus", "split", "session", "script_id", "gender", "orig_label")
"""Metadata columns written first (in this order) when present; others follow."""

SPEAKER_SEP = "|"
"""Joins the speakers of a line said by several people at once."""

LABELS4: tuple[str, ...] = ("neutral", "happy", "sad", "angry")
"""The default four classes."""

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- labels

CORPUS_LABELS: dict[str, tuple[str, ...]] = {
    "iemocap": ("neu", "hap", "exc", "sad", "ang", "fru", "sur", "fea", "dis", "oth"),
    "ravdess": ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"),
    "tess": ("neutral", "happy", "sad", "angry", "fear", "disgust", "pleasant_surprise"),
    "crema_d": ("neutral", "happy", "sad", "angry", "fearful", "disgust"),
    "meld": ("neutral", "joy", "sadness", "anger", "surprise", "fear", "disgust"),
    "emorynlp": ("Neutral", "Joyful", "Sad", "Mad", "Scared", "Peaceful", "Powerful"),
}
"""Each corpus's own label set (the "all" mode keeps these as they are)."""

COMMON_LABELS: dict[str, str] = {"fear": "fearful", "pleasant_surprise": "surprised", "joy": "happy",
                                 "sadness": "sad", "anger": "angry", "surprise": "surprised"}
"""Corpus labels respelled as one vocabulary (``label_mode = "common"``); others keep their names."""

NO_LABEL: dict[str, tuple[str, ...]] = {"iemocap": ("xxx",)}
"""Corpus labels that mean "no label" (IEMOCAP ``xxx``: the annotators did not agree)."""

LABEL_MAPS: dict[str, dict[str, str]] = {
    "iemocap": {"neu": "neutral", "hap": "happy", "exc": "happy", "sad": "sad", "ang": "angry"},
    "ravdess": {"neutral": "neutral", "happy": "happy", "sad": "sad", "angry": "angry"},
    "tess": {"neutral": "neutral", "happy": "happy", "sad": "sad", "angry": "angry"},
    "crema_d": {"neutral": "neutral", "happy": "happy", "sad": "sad", "angry": "angry"},
    "meld": {"neutral": "neutral", "joy": "happy", "sadness": "sad", "anger": "angry"},
    "emorynlp": {"Neutral": "neutral", "Joyful": "happy", "Sad": "sad", "Mad": "angry"},
}
"""Corpus label -> one of :data:`LABELS4`. Labels not in a map are dropped."""

LabelSpec = str | Mapping[str, str]
"""``"4"`` (the :data:`LABEL_MAPS`), ``"all"`` (the corpus's own labels), or a dict."""


class ConfigError(ValueError):
    """A training config that is not valid; the message says what is allowed."""


class ConversionError(ValueError):
    """A source corpus is not laid out or labeled as the converter expects."""


def label_map(corpus: str, labels: LabelSpec = "4", *, calm: str | None = None) -> dict[str, str]:
    """The map from ``corpus``'s own labels to manifest labels.

    ``labels`` is ``"4"``, ``"all"`` or a dict (corpus label -> label; labels it
    leaves out are dropped). ``calm`` (RAVDESS) maps ``calm`` to a label, e.g.
    ``"neutral"``; by default calm clips are dropped in 4-class mode.
    """
    if corpus not in CORPUS_LABELS:
        raise ConversionError(f"unknown corpus {corpus!r}; known: {', '.join(CORPUS_LABELS)}")
    if isinstance(labels, Mapping):
        mapping = dict(labels)
    elif labels == "4":
        mapping = dict(LABEL_MAPS[corpus])
    elif labels == "all":
        mapping = {lab: lab for lab in CORPUS_LABELS[corpus]}
    else:
        raise ConversionError(f"labels must be '4', 'all' or a dict, not {labels!r}")
    if calm is not None:
        if corpus != "ravdess":
            raise ConversionError("calm= only applies to RAVDESS")
        mapping["calm"] = calm
    return mapping


def target_labels(mapping: Mapping[str, str]) -> tuple[str, ...]:
    """The label set a map produces: :data:`LABELS4` order when it fits, else first-seen order."""
    values = [v for v in dict.fromkeys(mapping.values()) if v]
    if set(values) <= set(LABELS4):
        return tuple(lab for lab in LABELS4 if lab in values)
    return tuple(values)


def _mapper(corpus: str, mapping: Mapping[str, str]) -> Callable[[str], str]:
    """A function corpus label -> manifest label ("" when dropped); raises on labels it never heard of."""
    known = set(CORPUS_LABELS[corpus]) | set(NO_LABEL.get(corpus, ())) | set(mapping)

    def convert(raw: str) -> str:
        if raw not in known:
            raise ConversionError(f"{corpus}: unexpected label {raw!r}; known: {', '.join(sorted(known))}")
        return mapping.get(raw, "")

    return convert


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class Utterance:
    """One row of a manifest."""

    dialogue_id: str
    utt_index: int
    speaker: str
    label: str
    text: str
    audio: str = ""
    extra: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def labeled(self) -> bool:
        """False for an unlabeled context turn (``label == ""``)."""
        return self.label != ""

    @property
    def speakers(self) -> tuple[str, ...]:
        """The speaker ids (several for a line said together)."""
        return tuple(s for s in self.speaker.split(SPEAKER_SEP) if s)

    def meta(self, key: str) -> str:
        """A column's value: a required column or a metadata column ("" when absent)."""
        if key in COLUMNS:
            return str(getattr(self, key))
        return self.extra.get(key, "")


class ManifestError(ValueError):
    """A manifest that is not valid; the message names the problem rows."""


class Manifest:
    """The utterances of a manifest file, grouped by dialogue in time order."""

    def __init__(self, path: Path | str, utterances: Iterable[Utterance], labels: Sequence[str] | None = None):
        self.path = Path(path)
        groups: dict[str, list[Utterance]] = {}
        for u in utterances:
            groups.setdefault(u.dialogue_id, []).append(u)
        self._dialogues = {d: sorted(us, key=lambda u: u.utt_index) for d, us in groups.items()}
        self.utterances: list[Utterance] = [u for us in self._dialogues.values() for u in us]
        present = {u.label for u in self.utterances if u.label}
        self._labels = tuple(labels) if labels is not None else tuple(sorted(present))

    def __len__(self) -> int:
        return len(self.utterances)

    def dialogues(self) -> list[list[Utterance]]:
        """Every dialogue (in manifest order) as its utterances in time order."""
        return [list(us) for us in self._dialogues.values()]

    def dialogue_ids(self) -> list[str]:
        return list(self._dialogues)

    def dialogue(self, dialogue_id: str) -> list[Utterance]:
        return list(self._dialogues[dialogue_id])

    def labels(self) -> tuple[str, ...]:
        """The class labels: those given to :func:`read_manifest`, else the ones present, sorted."""
        return self._labels

    def speakers(self) -> list[str]:
        """Every speaker id, in order of first appearance."""
        return list(dict.fromkeys(s for u in self.utterances for s in u.speakers))

    def audio_path(self, u: Utterance) -> Path | None:
        """The audio file of ``u`` (relative paths resolved against the manifest's folder), or None."""
        if not u.audio:
            return None
        return self.path.parent / u.audio

    def label_counts(self) -> dict[str, int]:
        """Labeled utterances per label (context turns left out)."""
        counts = Counter(u.label for u in self.utterances if u.label)
        order = list(self._labels) + sorted(set(counts) - set(self._labels))
        return {lab: counts[lab] for lab in order if counts[lab]}


def format_rows(rows: Sequence[int], limit: int = 10) -> str:
    """``"row 3"``, ``"rows 3, 4, 17"``, ``"rows 5-9, 12"``; at most ``limit`` items, then "and N more"."""
    rows = sorted(set(rows))
    runs: list[tuple[int, int]] = []
    for r in rows:
        if runs and r == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], r)
        else:
            runs.append((r, r))
    items: list[tuple[str, int]] = []  # (text, rows it covers)
    for a, b in runs:
        if b - a >= 2:
            items.append((f"{a}-{b}", b - a + 1))
        else:
            items.extend((str(r), 1) for r in range(a, b + 1))
    text = ("row " if len(rows) == 1 else "rows ") + ", ".join(t for t, _ in items[:limit])
    shown = sum(n for _, n in items[:limit])
    if shown < len(rows):
        text += f" and {len(rows) - shown} more"
    return text


def _format_examples(examples: Sequence[str], limit: int = 5) -> str:
    unique = list(dict.fromkeys(examples))
    text = ", ".join(unique[:limit])
    if len(unique) > limit:
        text += f" and {len(unique) - limit} more"
    return text


class _Problems:
    """Problems found in a manifest, grouped by kind, each with its rows (and example values)."""

    def __init__(self) -> None:
        self._rows: dict[str, list[int]] = {}
        self._examples: dict[str, list[str]] = {}

    def add(self, kind: str, row: int | Iterable[int], example: str | None = None) -> None:
        self._rows.setdefault(kind, []).extend([row] if isinstance(row, int) else row)
        if example is not None:
            self._examples.setdefault(kind, []).append(example)

    def __bool__(self) -> bool:
        return bool(self._rows)

    def lines(self) -> list[str]:
        out = []
        for kind, rows in self._rows.items():
            line = f"{format_rows(rows)}: {kind}"
            if kind in self._examples:
                line += f": {_format_examples(self._examples[kind])}"
            out.append(line)
        return out


def read_manifest(
    path: Path | str, labels: Sequence[str] | None = None, require_audio: bool | None = None
) -> Manifest:
    """Read and validate a manifest; raise :class:`ManifestError` naming the problem rows.

    ``labels``: the allowed classes (``""`` is always allowed: an unlabeled context
    turn); None allows any label. ``require_audio``: True needs an existing file on
    every row; None (default) checks the files that rows name; False checks none.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    with open(path, newline="", encoding="utf-8-sig") as f:
        records = list(csv.reader(f))
    if not records:
        raise ManifestError(f"{path}: empty file (expected a header: {', '.join(COLUMNS)})")
    header = [h.strip() for h in records[0]]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise ManifestError(f"{path}: missing columns: {', '.join(missing)} (found: {', '.join(header)})")
    doubled = sorted({h for h in header if header.count(h) > 1})
    if doubled:
        raise ManifestError(f"{path}: duplicate columns: {', '.join(doubled)}")

    allowed = set(labels) if labels is not None else None
    problems = _Problems()
    utterances: list[Utterance] = []
    rows_of: dict[str, list[tuple[int, int]]] = {}  # dialogue -> (utt_index, row)
    seen: dict[tuple[str, int], int] = {}
    for row, record in enumerate(records[1:], start=2):
        if not any(cell.strip() for cell in record):
            continue
        if len(record) != len(header):
            problems.add(f"expected {len(header)} fields", row, f"row {row} has {len(record)}")
            continue
        values = dict(zip(header, record, strict=True))
        dialogue_id = values["dialogue_id"].strip()
        if not dialogue_id:
            problems.add("empty dialogue_id", row)
        try:
            index = int(values["utt_index"])
            if index < 0:
                raise ValueError
        except ValueError:
            problems.add("utt_index is not an integer >= 0", row, repr(values["utt_index"]))
            continue
        if not values["speaker"].strip():
            problems.add("empty speaker", row)
        label = values["label"].strip()
        if allowed is not None and label and label not in allowed:
            problems.add(f"unknown label {label!r}; allowed: {', '.join(labels or ())} (or empty for context)", row)
        audio = values["audio"].strip()
        if require_audio and not audio:
            problems.add("no audio", row)
        elif audio and require_audio is not False and not (path.parent / audio).is_file():
            problems.add(f"audio file not found (relative to {path.parent})", row, audio)
        key = (dialogue_id, index)
        if key in seen:
            problems.add("duplicate (dialogue_id, utt_index)", [seen[key], row], f"({dialogue_id!r}, {index})")
            continue
        seen[key] = row
        rows_of.setdefault(dialogue_id, []).append((index, row))
        extra = {k: v for k, v in values.items() if k not in COLUMNS}
        utterances.append(
            Utterance(dialogue_id, index, values["speaker"].strip(), label, values["text"], audio, extra)
        )

    for dialogue_id, entries in rows_of.items():
        indices = sorted(i for i, _ in entries)
        if indices != list(range(len(indices))):
            shown = ", ".join(map(str, indices[:8])) + (", ..." if len(indices) > 8 else "")
            problems.add(
                "utt_index not 0..n-1 within its dialogue", [r for _, r in entries], f"{dialogue_id!r} has {shown}"
            )
    if problems:
        raise ManifestError(f"{path}: invalid manifest:\n" + "\n".join(f"  {line}" for line in problems.lines()))
    return Manifest(path, utterances, labels)


def write_manifest(path: Path | str, utterances: Iterable[Utterance]) -> Path:
    """Write utterances (in the given order) as a manifest CSV; metadata columns from their ``extra``."""
    path = Path(path)
    utterances = list(utterances)
    keys = dict.fromkeys(k for u in utterances for k in u.extra)
    extra_columns = [k for k in EXTRA_ORDER if k in keys] + [k for k in keys if k not in EXTRA_ORDER]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow([*COLUMNS, *extra_columns])
        for u in utterances:
            writer.writerow(
                [u.dialogue_id, u.utt_index, u.speaker, u.label, u.text, u.audio]
                + [u.extra.get(k, "") for k in extra_columns]
            )
    return path


def summarize(manifest: Manifest) -> dict[str, object]:
    """Counts for a report: utterances, labeled, dialogues, speakers, per-label counts."""
    return {
        "utterances": len(manifest),
        "labeled": sum(u.labeled for u in manifest.utterances),
        "dialogues": len(manifest.dialogue_ids()),
        "speakers": len(manifest.speakers()),
        "labels": manifest.label_counts(),
    }


# --------------------------------------------------------------------------- converters


def shared_data_dir() -> Path:
    """``$REALTIME_SER_SHARED_DATA``, else ``<repo>/../shared/data``."""
    return Path(os.environ.get("REALTIME_SER_SHARED_DATA", REPO.parent / "shared" / "data"))


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise ConversionError(f"not found: {path}")
    with open(path, newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f))


def _relative(target: Path, manifest_dir: Path) -> str:
    """``target`` relative to ``manifest_dir``, with forward slashes."""
    return Path(os.path.relpath(os.path.abspath(target), os.path.abspath(manifest_dir))).as_posix()


def _script_id(dialogue_id: str) -> str:
    """IEMOCAP ``Ses01F_script01_2`` -> ``script01_2``; "" for improvised dialogues."""
    match = re.search(r"_(script\d+_\d+\w*)$", dialogue_id)
    return match.group(1) if match else ""


def convert_iemocap_text(src: Path, manifest_dir: Path, labels: LabelSpec = "4") -> list[Utterance]:
    """IEMOCAP Sessions 1-4 transcripts (``iemocap_text/utterances.csv``); text only.

    Speakers are per-session actors (``Ses01F``, ``Ses01M``); ``script_id`` keeps scripts
    apart for folds. Note: this CSV holds only the turns labeled with one of six
    emotions, so the dialogues here already lack the other turns.
    """
    src = Path(src)
    csv_path = src / "utterances.csv" if src.is_dir() else src
    convert = _mapper("iemocap", label_map("iemocap", labels))
    out = []
    for r in _read_csv(csv_path):
        session, letter = r["session"], r["speaker"]
        extra = {
            "corpus": "iemocap",
            "session": session,
            "script_id": _script_id(r["dialogue_id"]),
            "gender": letter,
            "orig_label": r["label"],
            "cosmic_split": r.get("split_cosmic", ""),
        }
        speaker = session + letter
        out.append(Utterance(r["dialogue_id"], int(r["utt_index"]), speaker, convert(r["label"]), r["text"], "", extra))
    return out


_EMO_LINE = re.compile(r"^\[\s*([\d.]+)\s*-\s*([\d.]+)\s*\]\s+(Ses\S+)\s+(\S+)")
_TRANS_LINE = re.compile(r"^(Ses\S+)\s+\[\s*([\d.]+)\s*-\s*([\d.]+)\s*\]:\s?(.*)$")


def convert_iemocap_release(src: Path, manifest_dir: Path, labels: LabelSpec = "4") -> list[Utterance]:
    """The official IEMOCAP release (``IEMOCAP_full_release/SessionN/...``) with audio.

    Turns come from ``dialog/EmoEvaluation/*.txt`` (ordered by start time), text from
    ``dialog/transcriptions``, audio ``sentences/wav/<dialog>/<utt>.wav``. Speaker =
    session + the gender letter of the turn id (``Ses01F_impro01_M003`` -> ``Ses01M``).
    """
    src = Path(src)
    if (src / "IEMOCAP_full_release").is_dir():
        src = src / "IEMOCAP_full_release"
    sessions = sorted(p for p in src.glob("Session*") if p.is_dir())
    if not sessions:
        raise ConversionError(f"no Session* folders in {src} (expected the IEMOCAP_full_release layout)")
    convert = _mapper("iemocap", label_map("iemocap", labels))
    out: list[Utterance] = []
    for session_dir in sessions:
        for emo_file in sorted((session_dir / "dialog" / "EmoEvaluation").glob("Ses*.txt")):
            dialogue_id = emo_file.stem
            turns = []
            for line in emo_file.read_text(encoding="utf-8", errors="replace").splitlines():
                m = _EMO_LINE.match(line)
                if m:
                    turns.append((float(m.group(1)), m.group(3), m.group(4)))
            texts = {}
            trans_file = session_dir / "dialog" / "transcriptions" / emo_file.name
            if trans_file.is_file():
                for line in trans_file.read_text(encoding="utf-8", errors="replace").splitlines():
                    m = _TRANS_LINE.match(line.strip())
                    if m:
                        texts[m.group(1)] = m.group(4).strip()
            for index, (_, utt_id, raw) in enumerate(sorted(turns)):
                session, letter = utt_id[:5], utt_id.rsplit("_", 1)[1][:1]
                wav = session_dir / "sentences" / "wav" / dialogue_id / f"{utt_id}.wav"
                extra = {
                    "corpus": "iemocap",
                    "session": session,
                    "script_id": _script_id(dialogue_id),
                    "gender": letter,
                    "orig_label": raw,
                    "utt_id": utt_id,
                }
                out.append(
                    Utterance(dialogue_id, index, session + letter, convert(raw), texts.get(utt_id, ""),
                              _relative(wav, manifest_dir), extra)
                )
    return out


#: Metadata columns of the shared corpora's manifests that are kept (when present).
_CLIP_META = ("intensity", "age", "voice_vote", "voice_agreement")


def _clips(corpus: str, src: Path, manifest_dir: Path, mapping: Mapping[str, str]) -> list[Utterance]:
    """Single-clip corpora (RAVDESS, TESS, CREMA-D) from their ``manifest.csv``; dropped labels are
    left out, and so are clips marked ``silent`` (CREMA-D's one clip without speech)."""
    convert = _mapper(corpus, mapping)
    out = []
    for r in _read_csv(Path(src) / "manifest.csv"):
        label = convert(r["emotion"])
        if not label or r.get("silent", "").strip() in ("1", "true"):
            continue
        extra = {
            "corpus": corpus,
            "script_id": r["transcript"],
            "gender": r["gender"],
            "orig_label": r["emotion"],
            **{k: r[k] for k in _CLIP_META if k in r},
            "duration": r["duration"],
        }
        audio = _relative(Path(src) / r["path"], manifest_dir)
        out.append(Utterance(Path(r["path"]).stem, 0, r["speaker"], label, r["transcript"], audio, extra))
    return out


def convert_ravdess(src: Path, manifest_dir: Path, labels: LabelSpec = "4", calm: str | None = None) -> list[Utterance]:
    """RAVDESS speech: each clip a dialogue of one; ``script_id`` = the sentence; ``calm`` maps calm."""
    return _clips("ravdess", src, manifest_dir, label_map("ravdess", labels, calm=calm))


def convert_tess(src: Path, manifest_dir: Path, labels: LabelSpec = "4") -> list[Utterance]:
    """TESS (speaker ``tess_OAF``): each clip a dialogue of one; ``script_id`` = the carrier sentence."""
    return _clips("tess", src, manifest_dir, label_map("tess", labels))


def convert_crema_d(src: Path, manifest_dir: Path, labels: LabelSpec = "4") -> list[Utterance]:
    """CREMA-D (75 actors ``crema_NNNN``): each clip a dialogue of one; ``script_id`` = the sentence;
    ``voice_vote`` / ``voice_agreement``: what listeners heard from the voice alone, and how many agreed."""
    return _clips("crema_d", src, manifest_dir, label_map("crema_d", labels))


def convert_meld(src: Path, manifest_dir: Path, labels: LabelSpec = "4") -> list[Utterance]:
    """MELD train/dev CSVs: dialogues ``meld_<split>_<Dialogue_ID>``; utterances renumbered 0..n-1."""
    src = Path(src)
    convert = _mapper("meld", label_map("meld", labels))
    files = [(split, src / f"{split}_sent_emo.csv") for split in ("train", "dev", "test")]
    files = [(split, p) for split, p in files if p.is_file()]
    if not files:
        raise ConversionError(f"no MELD CSVs (train_sent_emo.csv, ...) in {src}")
    out = []
    for split, csv_path in files:
        dialogues: dict[str, list[dict[str, str]]] = {}
        for r in _read_csv(csv_path):
            dialogues.setdefault(r["Dialogue_ID"], []).append(r)
        for dia, rows in dialogues.items():
            rows.sort(key=lambda r: int(r["Utterance_ID"]))
            for index, r in enumerate(rows):
                extra = {"corpus": "meld", "split": split, "orig_label": r["Emotion"], "orig_utt_id": r["Utterance_ID"],
                         "season": r["Season"], "episode": r["Episode"]}
                out.append(Utterance(f"meld_{split}_{dia}", index, r["Speaker"].strip(), convert(r["Emotion"]),
                                     r["Utterance"], "", extra))
    return out


def _emorynlp_speaker(raw: str) -> str:
    """``"['Monica Geller', 'Phoebe Buffay']"`` -> ``"Monica Geller|Phoebe Buffay"``."""
    try:
        names = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        names = [raw]
    if isinstance(names, str):
        names = [names]
    return SPEAKER_SEP.join(str(n).strip() for n in names if str(n).strip())


def convert_emorynlp(src: Path, manifest_dir: Path, labels: LabelSpec = "4") -> list[Utterance]:
    """EmoryNLP train/dev/test: scene-level dialogues ``emorynlp_<split>_sSSeEE_cNN``."""
    src = Path(src)
    convert = _mapper("emorynlp", label_map("emorynlp", labels))
    files = [(split, src / f"emorynlp_{split}_final.csv") for split in ("train", "dev", "test")]
    files = [(split, p) for split, p in files if p.is_file()]
    if not files:
        raise ConversionError(f"no EmoryNLP CSVs (emorynlp_train_final.csv, ...) in {src}")
    out = []
    for split, csv_path in files:
        scenes: dict[str, list[dict[str, str]]] = {}
        for r in _read_csv(csv_path):
            key = f"emorynlp_{split}_s{int(r['Season']):02d}e{int(r['Episode']):02d}_c{int(r['Scene_ID']):02d}"
            scenes.setdefault(key, []).append(r)
        for dialogue_id, rows in scenes.items():
            rows.sort(key=lambda r: int(r["Utterance_ID"]))
            for index, r in enumerate(rows):
                extra = {"corpus": "emorynlp", "split": split, "orig_label": r["Emotion"],
                         "orig_utt_id": r["Utterance_ID"]}
                out.append(Utterance(dialogue_id, index, _emorynlp_speaker(r["Speaker"]), convert(r["Emotion"]),
                                     r["Utterance"], "", extra))
    return out


CONVERTERS: dict[str, Callable[..., list[Utterance]]] = {
    "iemocap_text": convert_iemocap_text,
    "iemocap_release": convert_iemocap_release,
    "meld": convert_meld,
    "emorynlp": convert_emorynlp,
    "ravdess": convert_ravdess,
    "tess": convert_tess,
    "crema_d": convert_crema_d,
}
"""Converter name -> function(src, manifest_dir, labels=...) returning utterances."""

CORPUS_OF = {"iemocap_text": "iemocap", "iemocap_release": "iemocap", "meld": "meld", "emorynlp": "emorynlp",
             "ravdess": "ravdess", "tess": "tess", "crema_d": "crema_d"}
"""Converter name -> corpus (the key of :data:`LABEL_MAPS`)."""

SHARED_FOLDERS = {"iemocap_text": "iemocap_text", "meld": "meld_text", "emorynlp": "emorynlp_text",
                  "ravdess": "ravdess", "tess": "tess", "crema_d": "crema_d"}
"""Converter name -> its folder in the shared data (IEMOCAP with audio is not there)."""


def default_src(name: str) -> Path:
    """Where a corpus lies in the shared data folder."""
    if name not in SHARED_FOLDERS:
        raise ConversionError(f"{name}: no default source folder; give --src")
    return shared_data_dir() / SHARED_FOLDERS[name]


def convert(name: str, src: Path | str | None, out: Path | str, labels: LabelSpec = "4",
            calm: str | None = None) -> Manifest:
    """Convert corpus ``name`` from ``src`` into the manifest ``out``; read it back (validated)."""
    if name not in CONVERTERS:
        raise ConversionError(f"unknown corpus {name!r}; known: {', '.join(CONVERTERS)}")
    src_path = Path(src) if src is not None else default_src(name)
    if not src_path.exists():
        raise ConversionError(f"{name}: source not found: {src_path}")
    out = Path(out)
    mapping = label_map(CORPUS_OF[name], labels, calm=calm)  # also rejects calm= for corpora other than RAVDESS
    kwargs = {"calm": calm} if calm is not None else {}
    utterances = CONVERTERS[name](src_path, out.parent, labels, **kwargs)
    if not utterances:
        raise ConversionError(f"{name}: no utterances found in {src_path}")
    write_manifest(out, utterances)
    return read_manifest(out, labels=target_labels(mapping))
