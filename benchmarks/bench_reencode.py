"""Robustness to re-encoding: every dev clip answered from its frames + wav and from an H.264 mp4 of
the same frames at 1 fps with the same sound (AAC), lite + rules; per clip J (visible clips) or left
empty (off-screen) both ways, the mean |dJ| and the clips whose answers differ.

    python benchmarks/bench_reencode.py [--root ../shared/data/davis_av_dev] [--out benchmarks/results/reencode.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np


def write_mp4(
    path: Path, frames: list[np.ndarray], wave: np.ndarray, rate: int = 16000, crf: int = 23
) -> Path:
    """``frames`` ((H, W, 3) uint8, one per second) and mono ``wave`` (float32 at ``rate``) as an H.264 /
    AAC mp4 at 1 fps: frame i shown from second i to i + 1."""
    import av

    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=1, options={"crf": str(crf)})
        vs.width, vs.height, vs.pix_fmt = w - w % 2, h - h % 2, "yuv420p"
        aus = out.add_stream("aac", rate=48000)
        aus.layout = "mono"
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(
                np.ascontiguousarray(img[: vs.height, : vs.width]), format="rgb24"
            )
            frame.pts, frame.time_base = i, Fraction(1, 1)
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        resampler = av.AudioResampler(format=aus.codec_context.format.name, layout="mono", rate=48000)
        chunk = 1024
        for start in range(0, len(wave), chunk):
            af = av.AudioFrame.from_ndarray(
                wave[None, start : start + chunk].astype(np.float32), format="flt", layout="mono"
            )
            af.sample_rate, af.pts, af.time_base = rate, start, Fraction(1, rate)
            for converted in resampler.resample(af):
                for packet in aus.encode(converted):
                    out.mux(packet)
        for converted in resampler.resample(None):
            for packet in aus.encode(converted):
                out.mux(packet)
        for packet in aus.encode():
            out.mux(packet)
    return path


def compare(
    root: Path, settings, toolset, names: list[str] | None = None, workdir: Path | None = None
) -> list[dict]:
    """Per clip: J (or left empty) from frames + wav and from the mp4, and the labels both ways."""
    from avs_agent.agent.run import run_clip, run_media
    from avs_agent.evals.datasets import load_dataset
    from avs_agent.evals.metrics import frame_ious

    rows = {r["name"]: r["case_type"] for r in csv.DictReader(open(root / "cases.csv"))}
    ds = load_dataset("avsbench-s4", root, "test")
    out = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for s in ds.samples:
            name = s.labels.name
            if names and name not in names:
                continue
            clip = s.inputs.load(aspect=settings.media.aspect, max_side=settings.media.max_side)
            mp4 = write_mp4(Path(tmp) / f"{name}.mp4", [f.image for f in clip.frames], clip.audio.waveform)
            gt = s.labels.masks()
            answers = {
                "frames": run_clip(clip, settings, toolset),
                "mp4": run_media(mp4, settings, toolset=toolset)[0],
            }
            row = {"name": name, "case": rows[name]}
            for how, ans in answers.items():
                masks = np.stack(ans.masks).astype(np.float32)
                if masks.shape != gt.shape:
                    raise RuntimeError(f"{name}: {how} gave masks {masks.shape}, the truth is {gt.shape}")
                row[how] = {
                    "labels": ans.labels,
                    "value": float(not masks.any())
                    if rows[name] == "offscreen"
                    else float(frame_ious(masks, gt).mean()),
                }
            row["delta"] = round(abs(row["mp4"]["value"] - row["frames"]["value"]), 4)
            out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path("../shared/data/davis_av_dev"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/reencode.json"))
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    from avs_agent.agent.settings import load_settings
    from avs_agent.tools.wiring import get_toolset

    settings = load_settings(overrides=args.set)
    toolset = get_toolset(settings.tool_config())
    t0 = time.perf_counter()
    rows = compare(args.root, settings, toolset)
    visible = [r for r in rows if r["case"] != "offscreen"]
    summary = {
        "clips": len(rows),
        "mean_abs_delta_j_visible": round(float(np.mean([r["delta"] for r in visible])), 4),
        "clips_delta_over_0.1": [r["name"] for r in visible if r["delta"] > 0.1],
        "j_visible_frames": round(float(np.mean([r["frames"]["value"] for r in visible])), 4),
        "j_visible_mp4": round(float(np.mean([r["mp4"]["value"] for r in visible])), 4),
        "offscreen_empty_frames": sum(r["frames"]["value"] for r in rows if r["case"] == "offscreen"),
        "offscreen_empty_mp4": sum(r["mp4"]["value"] for r in rows if r["case"] == "offscreen"),
        "labels_differ": [r["name"] for r in rows if r["frames"]["labels"] != r["mp4"]["labels"]],
        "seconds": round(time.perf_counter() - t0, 1),
        "settings_overrides": args.set,
        "encoding": "H.264 (libx264, crf 23, yuv420p) at 1 fps + AAC 48 kHz mono, PyAV",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "clips": rows}, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
