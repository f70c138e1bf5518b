"""Dataset loaders on small fixtures written here in each published layout."""

from __future__ import annotations

import csv
import json
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avs_agent.evals import datasets as D
from avs_agent.evals import metrics as M

H = W = 16


def write_wav(path: Path, seconds: float, freq: float = 440.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(16000 * seconds)) / 16000
    data = (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(data.tobytes())


def write_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)


def box_mask(x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[4:12, x0:x1] = 255
    return m


def make_s4(root: Path, clips: list[tuple[str, str, bool]] | None = None, split: str = "test") -> Path:
    """S4 layout: clips = [(name, category, visible)]; a visible clip's truth is a box."""
    clips = clips or [("vid_a", "dog_barking", True), ("vid_b", "car_horn", True), ("vid_c", "siren", False)]
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "s4_meta_data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "start", "category", "split"])
        for name, cat, _ in clips:
            w.writerow([name, 0, cat, split])
        w.writerow(["other", 0, "dog_barking", "train"])
    base = root / "s4_data"
    for k, (name, cat, visible) in enumerate(clips):
        write_wav(base / "audio_wav" / split / cat / f"{name}.wav", 5.0, 300 + 100 * k)
        for i in range(1, 6):
            write_png(base / "visual_frames" / split / cat / name / f"{name}_{i}.png", frame(k * 10 + i))
            gt = box_mask(2 + k, 10 + k) if visible else np.zeros((H, W), np.uint8)
            write_png(base / "gt_masks" / split / cat / name / f"{name}_{i}.png", gt)
    return root


def make_ms3(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "ms3_meta_data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "fid", "uid", "split"])
        w.writerow(["m1", 1, "u1", "test"])
        w.writerow(["m2", 1, "u2", "train"])
    base = root / "ms3_data"
    write_wav(base / "audio_wav" / "test" / "m1.wav", 5.0)
    for i in range(1, 6):
        write_png(base / "visual_frames" / "m1" / f"m1.mp4_{i}.png", frame(i))
        write_png(base / "gt_masks" / "test" / "m1" / f"m1_{i}.png", box_mask(1, 5))
    return root


def make_avss(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    pal = M.avss_palette()
    with open(root / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["vid", "uid", "s_min", "s_sec", "a_obj", "split", "label"])
        w.writerow(["x", "s_1", 0, 0, "dog", "test", "v1s"])
        w.writerow(["y", "v2_1", 0, 0, "guitar", "test", "v2"])
        w.writerow(["z", "m_1", 0, 0, "car", "train", "v1m"])
    (root / "label2idx.json").write_text(
        json.dumps({"background": 0, "dog": 1, "guitar": 2, **{f"c{i}": i for i in range(3, 71)}})
    )
    for subset, uid, n, cls in (("v1s", "s_1", 5, 1), ("v2", "v2_1", 10, 2)):
        folder = root / subset / uid
        write_wav(folder / "audio.wav", float(n))
        for i in range(n):
            (folder / "frames").mkdir(parents=True, exist_ok=True)
            Image.fromarray(frame(i)).save(folder / "frames" / f"{i}.jpg")
            rgb = np.zeros((H, W, 3), np.uint8)
            rgb[4:12, 2:10] = pal[cls]
            write_png(folder / "labels_rgb" / f"{i}.png", rgb)
    return root


def test_s4_layout(tmp_path):
    ds = D.load_dataset("avsbench-s4", make_s4(tmp_path), "test")
    assert [s.labels.name for s in ds] == ["vid_a", "vid_b", "vid_c"]
    s = ds.samples[0]
    assert s.key == "dog_barking/vid_a" and s.labels.category == "dog_barking"
    assert s.pred_files[0] == "dog_barking/vid_a/vid_a_1.png"
    masks = s.labels.masks()
    assert masks.shape == (5, H, W) and masks.dtype == bool and masks.sum() == 5 * 8 * 8
    assert not ds.samples[2].labels.masks().any()
    train = D.load_dataset("avsbench-s4", tmp_path, "train", on_missing="skip")
    assert len(train) == 0 and len(train.skipped) == 1


def test_clip_hides_names_and_labels(tmp_path):
    ds = D.load_dataset("avsbench-s4", make_s4(tmp_path), "test")
    clip = ds.samples[0].inputs.load()
    assert len(clip.frames) == 5 and len(clip.segments) == 5
    assert clip.frames[0].image.shape == (H, W, 3)
    assert abs(clip.audio.duration_s - 5.0) < 0.01
    text = json.dumps({"source": clip.source, "meta": clip.meta})
    for secret in ("vid_a", "dog", "barking", str(tmp_path)):
        assert secret not in text
    # two samples never share an id
    assert len({s.inputs.uid for s in ds}) == len(ds)


def test_missing_file_error_names_it(tmp_path):
    make_s4(tmp_path)
    gone = tmp_path / "s4_data" / "audio_wav" / "test" / "car_horn" / "vid_b.wav"
    gone.unlink()
    with pytest.raises(D.DatasetError, match="vid_b.wav"):
        D.load_dataset("avsbench-s4", tmp_path, "test")
    ds = D.load_dataset("avsbench-s4", tmp_path, "test", on_missing="skip")
    assert len(ds) == 2 and ds.skipped[0][0] == "car_horn/vid_b" and "vid_b.wav" in ds.skipped[0][1]


def test_malformed_files(tmp_path):
    with pytest.raises(D.DatasetError, match="s4_meta_data.csv"):
        D.load_dataset("avsbench-s4", tmp_path, "test")
    (tmp_path / "s4_meta_data.csv").write_text("name,split\na,test\n")
    with pytest.raises(D.DatasetError, match="category"):
        D.load_dataset("avsbench-s4", tmp_path, "test")
    make_s4(tmp_path)
    bad = tmp_path / "s4_data" / "gt_masks" / "test" / "dog_barking" / "vid_a" / "vid_a_2.png"
    bad.write_bytes(b"not a png")
    ds = D.load_dataset("avsbench-s4", tmp_path, "test")
    with pytest.raises(D.DatasetError, match="vid_a_2.png"):
        ds.samples[0].labels.masks()
    with pytest.raises(D.DatasetError, match="unknown dataset"):
        D.load_dataset("nope", tmp_path, "test")
    with pytest.raises(D.DatasetError, match="not found"):
        D.load_dataset("avsbench-s4", tmp_path / "absent", "test")


def test_ms3_layout(tmp_path):
    ds = D.load_dataset("avsbench-ms3", make_ms3(tmp_path), "test")
    assert len(ds) == 1
    s = ds.samples[0]
    assert s.inputs.frames[0].name == "m1.mp4_1.png" and s.pred_files[4] == "m1/m1_5.png"
    assert s.labels.masks().shape == (5, H, W)
    assert len(s.inputs.load().frames) == 5


def test_avss_layout_and_palette(tmp_path):
    ds = D.load_dataset("avss", make_avss(tmp_path), "test")
    assert [s.key for s in ds] == ["v1s/s_1", "v2/v2_1"]
    assert ds.class_names[:3] == ["background", "dog", "guitar"]
    v1s, v2 = ds.samples
    assert len(v1s.inputs.frames) == 5 and len(v2.inputs.frames) == 10
    labels = v2.labels.class_labels()
    assert labels.shape == (10, 224, 224)  # resized as the AVSS test loader does
    assert set(np.unique(labels)) == {0, 2}
    assert v2.labels.masks().any() and v2.pred_files[0] == "v2/v2_1/labels_rgb/0.png"
    assert v1s.labels.category == "dog"


def test_v3_split_csvs(tmp_path):
    make_avss(tmp_path)
    (tmp_path / "v3").mkdir()
    (tmp_path / "v3" / "meta_v3_unseen.csv").write_text("uid,a_obj,label\nv2_1,guitar,v2\n")
    ds = D.load_dataset("v3", tmp_path, "test")
    assert len(ds) == 1 and ds.samples[0].labels.kind == "binary"
    gt = ds.samples[0].labels.masks()
    assert gt.shape == (10, H, W) and gt.sum() == 10 * 64
    with pytest.raises(D.DatasetError, match="meta_v3_seen_val.csv"):
        D.load_dataset("v3", tmp_path, "val")


def test_write_and_read_prediction_round_trip(tmp_path):
    ds = D.load_dataset("avsbench-s4", make_s4(tmp_path / "data"), "test")
    s = ds.samples[0]
    masks = [m > 0 for m in s.labels.masks()]
    D.write_prediction(ds, s, tmp_path / "pred", masks)
    assert (tmp_path / "pred" / "dog_barking" / "vid_a" / "vid_a_3.png").is_file()
    back = D.read_prediction(ds, s, tmp_path / "pred")
    assert back.shape == (5, H, W) and np.array_equal(back > 0.5, s.labels.masks())
    # AVSS: a known class is written in its palette colour, an unknown one in white
    ads = D.load_dataset("avss", make_avss(tmp_path / "avss"), "test")
    a = ads.samples[0]
    m = [np.ones((H, W), bool)] * 5
    D.write_prediction(ads, a, tmp_path / "apred", m, classes=[1, 1, -1, 1, 1])
    cls = D.read_prediction(ads, a, tmp_path / "apred", semantic=True)
    assert set(np.unique(cls[0])) == {1} and set(np.unique(cls[2])) == {0}
    assert D.read_prediction(ads, a, tmp_path / "apred")[2].all()
