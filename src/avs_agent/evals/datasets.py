"""Loaders for the AVSBench layouts as published.

Each ``Sample`` keeps what a strategy may see (``inputs``: frame files and the audio file, loaded into
a ``tools.types.Clip`` whose ``source`` is an opaque id and whose ``meta`` names no file) apart from
its labels (``labels``: name, category, ground-truth files). The runner hands strategies only the
clip, so no strategy can read a name, a category folder or a ground truth.

Layouts (``root`` is the dataset's folder):

* ``avsbench-s4``: ``s4_meta_data.csv`` (name,start,category,split);
  ``s4_data/visual_frames/{split}/{category}/{name}/{name}_{1..5}.png``,
  ``s4_data/audio_wav/{split}/{category}/{name}.wav``,
  ``s4_data/gt_masks/{split}/{category}/{name}/{name}_{1..5}.png`` (the train split has only ``_1``).
* ``avsbench-ms3``: ``ms3_meta_data.csv`` (first column the name, a ``split`` column);
  ``ms3_data/visual_frames/{name}/{name}.mp4_{1..5}.png``, ``ms3_data/audio_wav/{split}/{name}.wav``,
  ``ms3_data/gt_masks/{split}/{name}/{name}_{1..5}.png``.
* ``avss`` (AVSBench-semantic): ``metadata.csv`` (vid,uid,s_min,s_sec,a_obj,split,label);
  ``{label}/{uid}/frames/{i}.jpg``, ``{label}/{uid}/labels_rgb/{i}.png`` (71-class colour
  palette), ``{label}/{uid}/audio.wav``, with ``label`` one of v1s, v1m (5 frames) and v2 (10);
  optional ``label2idx.json`` names the classes.
* ``v3`` (the AVS-V3 zero-shot split of GAVS, Wang et al. AAAI 2024): the AVSS folders plus split
  CSVs ``meta_v3_seen_train.csv``, ``meta_v3_seen_val.csv``, ``meta_v3_unseen.csv`` (in ``root``,
  ``root/v3`` or ``root/metadata``) with uid, a_obj, label columns; split ``test`` means
  ``unseen``; ground truth is binary (any non-black label pixel).

Ground truth is read as the official loaders read it: S4 masks with PIL ``convert('1')``, MS3 and
V3 masks as "non-zero is foreground", AVSS colour labels through the palette (colours not in it are
background), resized to 224 x 224 nearest as the AVSS test loader does.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from avs_agent.evals import metrics as M
from avs_agent.tools.errors import UserError
from avs_agent.tools.types import Clip

DATASETS = ("avsbench-s4", "avsbench-ms3", "avss", "v3")
OnMissing = Literal["error", "skip"]
AVSS_EVAL_SIZE = 224
"""AVSS test loaders resize labels to 224 x 224 (nearest) before scoring."""


class DatasetError(UserError):
    """A dataset file is missing or cannot be read; the message names the file."""


@dataclass(frozen=True)
class SampleInputs:
    """What a strategy may see: frame files in time order (1 fps) and the audio file."""

    frames: tuple[Path, ...]
    audio: Path
    uid: str
    """An opaque id (a hash of the sample's key): used as the clip's ``source``."""

    def load(self, aspect: float | None = None, max_side: int = 1280) -> Clip:
        """The clip: frames at 1 fps, audio cut per frame. ``source`` is opaque and ``meta`` holds no
        path, so a strategy learns nothing from file or folder names."""
        from avs_agent.tools.errors import MediaError
        from avs_agent.tools.media import assemble_clip, decode_audio, read_image
        from avs_agent.tools.types import Frame

        try:
            wave = decode_audio(self.audio)
            frames = [Frame(i, i + 0.5, read_image(p, max_side), aspect) for i, p in enumerate(self.frames)]
        except MediaError as exc:
            raise DatasetError(str(exc)) from None
        return assemble_clip(self.uid, frames, wave, one_segment=len(frames) == 1, meta={})


@dataclass(frozen=True)
class SampleLabels:
    """What only the scorer may see."""

    name: str
    category: str
    split: str
    gt_files: tuple[Path, ...]
    kind: Literal["binary", "semantic"]
    subset: str = ""
    """AVSS/V3: v1s, v1m or v2."""

    def masks(self) -> np.ndarray:
        """(T, H, W) bool ground truth, one per frame."""
        if self.kind == "semantic":
            return M.binary_from_labels(self.class_labels())
        return np.stack([_read_binary_mask(p, mode1=self.subset == "s4") for p in self.gt_files])

    def class_labels(self) -> np.ndarray:
        """(T, 224, 224) int64 AVSS class indices (semantic ground truth only)."""
        if self.kind != "semantic":
            raise ValueError("class labels exist only for AVSS")
        return np.stack([M.rgb_to_labels(_read_rgb(p, AVSS_EVAL_SIZE)) for p in self.gt_files])


@dataclass(frozen=True)
class Sample:
    key: str
    """Unique within the dataset: the path of its masks relative to the dataset's mask root."""
    inputs: SampleInputs
    labels: SampleLabels
    pred_files: tuple[str, ...]
    """Where its predicted masks go, relative to ``RUN/masks`` (the dataset's own layout)."""


@dataclass
class Dataset:
    name: str
    root: Path
    split: str
    samples: list[Sample]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(key, reason) of samples left out because a file was missing (``on_missing='skip'``)."""
    class_names: list[str] = field(default_factory=list)
    """AVSS class names by index (background first), when ``label2idx.json`` is there."""

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    @property
    def semantic(self) -> bool:
        return self.name == "avss"


# ----------------------------------------------------------------------------- reading files


def _read_binary_mask(path: Path, mode1: bool) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im.convert("1") if mode1 else im.convert("L"))
    except FileNotFoundError:
        raise DatasetError(f"ground-truth mask not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DatasetError(f"cannot read ground-truth mask {path}: {exc}") from None
    return arr > 0


def _read_rgb(path: Path, size: int | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
            if size is not None and rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.NEAREST)
            return np.asarray(rgb)
    except FileNotFoundError:
        raise DatasetError(f"label image not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DatasetError(f"cannot read label image {path}: {exc}") from None


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    if not path.is_file():
        raise DatasetError(f"metadata file not found: {path}")
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            fields = [c.strip() for c in reader.fieldnames or []]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read metadata file {path}: {exc}") from None
    missing = [c for c in required if c not in fields]
    if missing:
        raise DatasetError(
            f"metadata file {path} lacks column(s) {', '.join(missing)} (has: {', '.join(fields)})"
        )
    return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in rows]


def _uid(dataset: str, key: str) -> str:
    return "clip-" + hashlib.sha256(f"{dataset}:{key}".encode()).hexdigest()[:12]


def _first_missing(paths: list[Path]) -> Path | None:
    return next((p for p in paths if not p.is_file()), None)


# ----------------------------------------------------------------------------- layouts


def load_dataset(
    name: str,
    root: str | Path,
    split: str = "test",
    on_missing: OnMissing = "error",
    limit: int | None = None,
) -> Dataset:
    """Read a dataset's metadata and check every file a sample needs exists.

    Args:
        name: one of ``DATASETS``.
        root: the dataset's folder.
        split: train, val or test (V3: seen_train, seen_val, unseen; test = unseen).
        on_missing: 'error' raises ``DatasetError`` naming the first missing file; 'skip' leaves the
            sample out and records it in ``Dataset.skipped``.
        limit: keep only the first N samples (in metadata order).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    if name == "avsbench-s4":
        ds = _load_s4(root, split)
    elif name == "avsbench-ms3":
        ds = _load_ms3(root, split)
    elif name == "avss":
        ds = _load_avss(root, split)
    elif name == "v3":
        ds = _load_v3(root, split)
    else:
        raise DatasetError(f"unknown dataset '{name}': use one of {', '.join(DATASETS)}")
    kept: list[Sample] = []
    for sample in ds.samples:
        missing = _first_missing([*sample.inputs.frames, sample.inputs.audio, *sample.labels.gt_files])
        if missing is None and not sample.inputs.frames:
            missing = Path(f"{sample.key} (no frames)")
        if missing is not None:
            if on_missing == "error":
                raise DatasetError(f"{name}: file missing for sample {sample.labels.name}: {missing}")
            ds.skipped.append((sample.key, f"missing {missing}"))
            continue
        kept.append(sample)
    ds.samples = kept[:limit] if limit is not None else kept
    return ds


def _load_s4(root: Path, split: str) -> Dataset:
    rows = _read_csv(root / "s4_meta_data.csv", ("name", "category", "split"))
    base = root / "s4_data"
    n_masks = 1 if split == "train" else 5
    samples = []
    for row in rows:
        if row["split"] != split:
            continue
        name, cat = row["name"], row["category"]
        frames_dir = base / "visual_frames" / split / cat / name
        key = f"{cat}/{name}"
        samples.append(
            Sample(
                key=key,
                inputs=SampleInputs(
                    frames=tuple(frames_dir / f"{name}_{i}.png" for i in range(1, 6)),
                    audio=base / "audio_wav" / split / cat / f"{name}.wav",
                    uid=_uid("s4", key),
                ),
                labels=SampleLabels(
                    name=name,
                    category=cat,
                    split=split,
                    gt_files=tuple(
                        base / "gt_masks" / split / cat / name / f"{name}_{i}.png"
                        for i in range(1, n_masks + 1)
                    ),
                    kind="binary",
                    subset="s4",
                ),
                pred_files=tuple(f"{cat}/{name}/{name}_{i}.png" for i in range(1, n_masks + 1)),
            )
        )
    return Dataset("avsbench-s4", root, split, samples)


def _load_ms3(root: Path, split: str) -> Dataset:
    path = root / "ms3_meta_data.csv"
    rows = _read_csv(path, ("split",))
    base = root / "ms3_data"
    samples = []
    for row in rows:
        if row["split"] != split:
            continue
        name = next(iter(row.values()))
        cat = row.get("category") or row.get("a_obj") or ""
        samples.append(
            Sample(
                key=name,
                inputs=SampleInputs(
                    frames=tuple(base / "visual_frames" / name / f"{name}.mp4_{i}.png" for i in range(1, 6)),
                    audio=base / "audio_wav" / split / f"{name}.wav",
                    uid=_uid("ms3", name),
                ),
                labels=SampleLabels(
                    name=name,
                    category=cat,
                    split=split,
                    gt_files=tuple(base / "gt_masks" / split / name / f"{name}_{i}.png" for i in range(1, 6)),
                    kind="binary",
                    subset="ms3",
                ),
                pred_files=tuple(f"{name}/{name}_{i}.png" for i in range(1, 6)),
            )
        )
    return Dataset("avsbench-ms3", root, split, samples)


def _avss_sample(
    root: Path, row: dict[str, str], split: str, kind: Literal["binary", "semantic"], tag: str
) -> Sample:
    uid, subset = row["uid"], row["label"]
    if subset not in ("v1s", "v1m", "v2"):
        raise DatasetError(f"sample {uid}: unknown label (subset) '{subset}': expected v1s, v1m or v2")
    n = 10 if subset == "v2" else 5
    folder = root / subset / uid
    key = f"{subset}/{uid}"
    return Sample(
        key=key,
        inputs=SampleInputs(
            frames=tuple(folder / "frames" / f"{i}.jpg" for i in range(n)),
            audio=folder / "audio.wav",
            uid=_uid(tag, key),
        ),
        labels=SampleLabels(
            name=uid,
            category=row.get("a_obj", ""),
            split=split,
            gt_files=tuple(folder / "labels_rgb" / f"{i}.png" for i in range(n)),
            kind=kind,
            subset=subset,
        ),
        pred_files=tuple(f"{subset}/{uid}/labels_rgb/{i}.png" for i in range(n)),
    )


def _class_names(root: Path) -> list[str]:
    path = root / "label2idx.json"
    if not path.is_file():
        return []
    try:
        mapping = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None
    return [k for k, _ in sorted(mapping.items(), key=lambda kv: int(kv[1]))]


def _load_avss(root: Path, split: str) -> Dataset:
    rows = _read_csv(root / "metadata.csv", ("uid", "split", "label"))
    samples = [_avss_sample(root, r, split, "semantic", "avss") for r in rows if r["split"] == split]
    return Dataset("avss", root, split, samples, class_names=_class_names(root))


V3_SPLITS = {
    "test": "unseen",
    "unseen": "unseen",
    "train": "seen_train",
    "seen_train": "seen_train",
    "val": "seen_val",
    "seen_val": "seen_val",
}


def _load_v3(root: Path, split: str) -> Dataset:
    if split not in V3_SPLITS:
        raise DatasetError(f"unknown V3 split '{split}': use {', '.join(sorted(V3_SPLITS))}")
    fname = f"meta_v3_{V3_SPLITS[split]}.csv"
    candidates = [root / fname, root / "v3" / fname, root / "metadata" / fname]
    path = next((p for p in candidates if p.is_file()), candidates[0])
    rows = _read_csv(path, ("uid", "label"))
    samples = [_avss_sample(root, r, split, "binary", "v3") for r in rows]
    return Dataset("v3", root, split, samples)


# ----------------------------------------------------------------------------- predictions


def read_prediction(ds: Dataset, sample: Sample, masks_root: Path, semantic: bool = False) -> np.ndarray:
    """Predicted masks of one sample from ``masks_root`` in the dataset's layout.

    Returns (T, H, W) float32 in [0, 1] (binary datasets; 0/255 PNGs become 0/1, grey levels become
    probabilities) or, with ``semantic``, (T, 224, 224) int64 AVSS class indices. Predictions are
    resized (nearest) to the ground truth's size. AVSBench's own ``save_mask`` numbers S4/MS3 files
    from 0; those are accepted when the 1-based files are absent.
    """
    gt_shape = None
    out = []
    for i, rel in enumerate(sample.pred_files):
        path = masks_root / rel
        if not path.is_file() and ds.name in ("avsbench-s4", "avsbench-ms3"):
            alt = path.with_name(f"{sample.labels.name}_{i}.png")
            path = alt if alt.is_file() else path
        if not path.is_file():
            raise DatasetError(f"predicted mask not found: {path}")
        if ds.name in ("avss", "v3"):
            rgb = _read_rgb(path, AVSS_EVAL_SIZE if ds.name == "avss" else None)
            if semantic:
                out.append(M.rgb_to_labels(rgb))
                continue
            arr = (rgb.max(axis=2) > 0).astype(np.float32)
        else:
            arr = _read_grey(path)
        if gt_shape is None:
            gt_shape = _gt_size(ds, sample)
        if arr.shape != gt_shape:
            arr = _resize_nearest(arr, gt_shape)
        out.append(arr)
    return np.stack(out)


def _read_grey(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "P":  # AVSBench save_mask writes 0/1 palette indices
                arr = np.asarray(im).astype(np.float32)
                return (arr > 0).astype(np.float32)
            if im.mode == "1":
                return np.asarray(im).astype(np.float32)
            arr = np.asarray(im.convert("L")).astype(np.float32)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DatasetError(f"cannot read predicted mask {path}: {exc}") from None
    return arr / 255.0


def _gt_size(ds: Dataset, sample: Sample) -> tuple[int, int]:
    if ds.name == "avss":
        return (AVSS_EVAL_SIZE, AVSS_EVAL_SIZE)
    from PIL import Image

    with Image.open(sample.labels.gt_files[0]) as im:
        return (im.size[1], im.size[0])


def _resize_nearest(arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    im = Image.fromarray(arr.astype(np.float32), mode="F").resize(
        (shape[1], shape[0]), Image.Resampling.NEAREST
    )
    return np.asarray(im, dtype=np.float32)


def write_prediction(
    ds: Dataset, sample: Sample, masks_root: Path, masks: list[np.ndarray], classes: list[int] | None = None
) -> list[Path]:
    """Write one sample's predicted masks in the dataset's layout, each file atomically.

    Args:
        masks: one (H, W) bool mask per frame (the frame's size; resized nearest to the ground
            truth's size when it differs).
        classes: AVSS only: the class index each frame's foreground gets (-1: unknown class, written
            white, which scores as foreground for J/F and as background for the class-wise metrics).

    S4/MS3/V3 masks are greyscale PNGs 0/255; AVSS masks are palette colours.
    """
    import os

    from PIL import Image

    paths = []
    gt_shape = _gt_size(ds, sample) if ds.name != "avss" else None
    pal = M.avss_palette()
    for i, rel in enumerate(sample.pred_files):
        m = masks[i] if i < len(masks) else masks[-1]
        m = np.asarray(m, bool)
        if gt_shape is not None and m.shape != gt_shape:
            m = _resize_nearest(m.astype(np.float32), gt_shape) > 0.5
        if ds.name == "avss":
            c = (classes[i] if classes and i < len(classes) else -1) if m.any() else 0
            rgb = np.zeros((*m.shape, 3), np.uint8)
            rgb[m] = pal[c] if c >= 0 else (255, 255, 255)
            image = Image.fromarray(rgb, "RGB")
        else:
            image = Image.fromarray(m.astype(np.uint8) * 255, "L")
        path = masks_root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
        paths.append(path)
    return paths
