"""Robustness to re-encoding: every dev clip answered from its frames + wav and from an H.264 mp4 of
the same frames at 1 fps with the same sound (AAC), lite + rules; per clip J (visible clips) or left
empty (off-screen) both ways, the mean |dJ| and the clips whose answers differ.

    python benchmarks/bench_reencode.py [--root ../shared/data/davis_av_dev] [--out benchmarks/results/reencode.json]
        [--shares] [--perception FILE] [--redecide]

``--shares`` also runs the two half-way variants, so each share of the difference is known: ``video``
(the mp4's decoded frames with the original wav: what compression does to the pixels) and ``audio``
(the original frame files with the mp4's AAC-decoded sound: what the codec does to the tags). Every
run also checks the decoding itself (``signals``): the mp4's frames against the frame files (size,
PSNR, which frame file each decoded frame is nearest: the same instants) and its audio against the
wav (length, lag by cross-correlation, correlation, RMS ratio). ``--perception FILE`` keeps each
variant's perception (the tool outputs the decisions read); ``--redecide`` then reruns only the
decisions (``agent.decision.decide_clip`` under the current code and ``--set``) over the kept
perception, for work on the decisions alone.
"""

from __future__ import annotations

import argparse
import csv
import json
import pickle
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

VARIANTS = ("frames", "mp4", "video", "audio")
"""frames: the frame files + the wav; mp4: the H.264/AAC file alone; video: the mp4's frames + the
wav; audio: the frame files + the mp4's AAC-decoded sound."""


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


def signals(clip, mp4_clip) -> dict:
    """How faithfully the mp4 decodes: its frames against the frame files and its sound against the
    wav (both as the agent loads them)."""
    a, b = clip.audio.waveform.astype(np.float64), mp4_clip.audio.waveform.astype(np.float64)
    n = min(len(a), len(b))
    span = 800  # +-50 ms
    ref = a[span : n - span]
    xc = [float(np.dot(b[span + k : span + k + len(ref)], ref)) for k in range(-span, span + 1)]
    lag = int(np.argmax(xc)) - span

    def rms(x: np.ndarray) -> float:
        return float(np.sqrt(np.mean(x**2))) if len(x) else 0.0

    def psnr(x: np.ndarray, y: np.ndarray) -> float:
        mse = float(np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2))
        return round(10 * np.log10(255.0**2 / mse), 2) if mse else float("inf")

    ours, theirs = [f.image for f in clip.frames], [f.image for f in mp4_clip.frames]
    same_shape = len(ours) == len(theirs) and all(
        x.shape == y.shape for x, y in zip(ours, theirs, strict=False)
    )
    nearest = [
        int(np.argmin([np.mean((y.astype(np.float64) - x.astype(np.float64)) ** 2) for x in ours]))
        if same_shape
        else -1
        for y in theirs
    ]
    return {
        "frames": [len(ours), len(theirs)],
        "shape": [list(ours[0].shape), list(theirs[0].shape)],
        "frame_times_mp4": [f.time_s for f in mp4_clip.frames],
        "psnr_db": [psnr(x, y) for x, y in zip(ours, theirs, strict=False)] if same_shape else [],
        "nearest_frame_file": nearest,
        "audio_samples": [len(a), len(b)],
        "audio_lag_samples": lag,
        "audio_correlation": round(float(np.corrcoef(a[:n], b[:n])[0, 1]), 5),
        "audio_rms_ratio": round(rms(b[:n]) / max(rms(a[:n]), 1e-12), 4),
        "segment_rms_ratio": [
            round(rms(y.waveform.astype(np.float64)) / max(rms(x.waveform.astype(np.float64)), 1e-12), 4)
            for x, y in zip(clip.segments, mp4_clip.segments, strict=False)
        ],
    }


def value(case: str, masks: np.ndarray, gt: np.ndarray) -> float:
    """J of a visible clip (mean frame IoU), or 1/0 for an off-screen clip left empty or not."""
    from avs_agent.evals.metrics import frame_ious

    if masks.shape != gt.shape:
        raise RuntimeError(f"masks {masks.shape}, the truth is {gt.shape}")
    return (
        float(not masks.any())
        if case == "offscreen"
        else float(frame_ious(masks.astype(np.float32), gt).mean())
    )


def compare(
    root: Path,
    settings,
    toolset,
    names: list[str] | None = None,
    workdir: Path | None = None,
    variants: tuple[str, ...] = ("frames", "mp4"),
    keep: dict | None = None,
) -> list[dict]:
    """Per clip and variant (``VARIANTS``): J (or left empty) and the labels answered, the decoding
    check (``signals``) and, per variant other than frames, |dJ| against frames. ``keep``: filled with
    (clip name, variant) -> (perception, case, truth) for ``redecide``."""
    from avs_agent.agent.nodes import perception
    from avs_agent.agent.run import run_state
    from avs_agent.evals.datasets import load_dataset
    from avs_agent.tools.media import assemble_clip, open_clip

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
            mp4_clip = open_clip(mp4, None, settings.media)  # what `ask clip.mp4` loads
            clips = {
                "frames": clip,
                "mp4": mp4_clip,
                "video": open_clip(mp4, s.inputs.audio, settings.media),  # `ask clip.mp4 --audio clip.wav`
                # the frame files with the sound as the agent reads it from the mp4
                "audio": assemble_clip(
                    clip.source, clip.frames, mp4_clip.audio.waveform, one_segment=False, meta={}
                ),
            }
            gt = s.labels.masks()
            row = {"name": name, "case": rows[name], "signals": signals(clip, mp4_clip)}
            for how in variants:
                state, ctx = run_state(clips[how], settings, toolset)
                answer = state["answer"]
                masks = np.stack(answer.masks)
                try:
                    v = value(rows[name], masks, gt)
                except RuntimeError as exc:
                    raise RuntimeError(f"{name}: {how}: {exc}") from None
                row[how] = {
                    "labels": answer.labels,
                    "value": v,
                    "frame_labels": [fr.labels for fr in answer.frames],
                    # objects the detector named otherwise in one frame, found under their clip's name
                    "renamed": [
                        [st.frame, st.object, st.data["seen_as"]]
                        for st in answer.trace
                        if st.event == "renamed"
                    ],
                }
                if keep is not None:
                    keep[(name, how)] = (perception(state, ctx), rows[name], gt)
            for how in variants[1:]:
                row[f"delta_{how}"] = round(abs(row[how]["value"] - row["frames"]["value"]), 4)
            row["delta"] = row.get("delta_mp4", 0.0)
            out.append(row)
    return out


def redecide(kept: dict, settings, toolset) -> list[dict]:
    """``compare``'s rows from kept perception: only the decisions run again."""
    from avs_agent.agent.decision import decide_clip

    by_clip: dict[str, dict] = {}
    for (name, how), (perc, case, gt) in kept.items():
        d = decide_clip(perc, settings.agent.decision, settings.agent, toolset.matcher)
        objects = [sorted(o) for o in d.objects]
        labels = list(dict.fromkeys(x for o in objects for x in o))
        row = by_clip.setdefault(name, {"name": name, "case": case})
        row[how] = {"labels": labels, "value": value(case, d.masks(perc.shape), gt)}
    out = []
    for row in by_clip.values():
        for how in VARIANTS[1:]:
            if how in row:
                row[f"delta_{how}"] = round(abs(row[how]["value"] - row["frames"]["value"]), 4)
        row["delta"] = row.get("delta_mp4", 0.0)
        out.append(row)
    return out


def summarise(rows: list[dict], variants: tuple[str, ...]) -> dict:
    visible = [r for r in rows if r["case"] != "offscreen"]
    off = [r for r in rows if r["case"] == "offscreen"]
    out: dict = {"clips": len(rows), "visible": len(visible)}
    for how in variants[1:]:
        deltas = [r[f"delta_{how}"] for r in visible]
        key = "" if how == "mp4" else f"_{how}"
        out[f"mean_abs_delta_j_visible{key}"] = round(float(np.mean(deltas)), 4)
        out[f"clips_delta_over_0.1{key}"] = [r["name"] for r in visible if r[f"delta_{how}"] > 0.1]
        out[f"labels_differ{key}"] = [r["name"] for r in rows if r[how]["labels"] != r["frames"]["labels"]]
    for how in variants:
        out[f"j_visible_{how}"] = round(float(np.mean([r[how]["value"] for r in visible])), 4)
        out[f"offscreen_empty_{how}"] = sum(r[how]["value"] for r in off)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path("../shared/data/davis_av_dev"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/reencode.json"))
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--shares", action="store_true", help="also the video-only and audio-only variants")
    ap.add_argument("--perception", type=Path, help="keep each variant's perception in this pickle")
    ap.add_argument(
        "--redecide", action="store_true", help="rerun only the decisions over the kept --perception"
    )
    args = ap.parse_args()
    from avs_agent.agent.settings import load_settings
    from avs_agent.tools.wiring import get_toolset

    settings = load_settings(overrides=args.set)
    toolset = get_toolset(settings.tool_config())
    variants = VARIANTS if args.shares else ("frames", "mp4")
    t0 = time.perf_counter()
    if args.redecide:
        if args.perception is None or not args.perception.is_file():
            raise SystemExit("bench_reencode: --redecide needs the pickle of an earlier --perception run")
        kept = pickle.loads(args.perception.read_bytes())
        variants = tuple(v for v in VARIANTS if any(how == v for _, how in kept))
        rows = redecide(kept, settings, toolset)
    else:
        kept = {} if args.perception else None
        rows = compare(args.root, settings, toolset, variants=variants, keep=kept)
        if args.perception:
            args.perception.parent.mkdir(parents=True, exist_ok=True)
            args.perception.write_bytes(pickle.dumps(kept))
    summary = summarise(rows, variants)
    sig = [r["signals"] for r in rows if "signals" in r]
    if sig:
        summary["decoding"] = {
            "same_frame_count_and_shape": all(
                s["frames"][0] == s["frames"][1] and s["shape"][0] == s["shape"][1] for s in sig
            ),
            "each_frame_nearest_its_own_file": all(
                s["nearest_frame_file"] == list(range(s["frames"][0])) or len({*s["nearest_frame_file"]}) == 1
                for s in sig
            ),
            "psnr_db_min_mean": [
                round(min(min(s["psnr_db"]) for s in sig), 2),
                round(float(np.mean([np.mean(s["psnr_db"]) for s in sig])), 2),
            ],
            "audio_samples_extra": sorted({s["audio_samples"][1] - s["audio_samples"][0] for s in sig}),
            "audio_lag_samples": sorted({s["audio_lag_samples"] for s in sig}),
            "audio_correlation_min": min(s["audio_correlation"] for s in sig),
            "audio_rms_ratio_range": [
                min(s["audio_rms_ratio"] for s in sig),
                max(s["audio_rms_ratio"] for s in sig),
            ],
        }
    summary.update(
        {
            "seconds": round(time.perf_counter() - t0, 1),
            "settings_overrides": args.set,
            "encoding": "H.264 (libx264, crf 23, yuv420p) at 1 fps + AAC 48 kHz mono, PyAV",
        }
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "clips": rows}, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
