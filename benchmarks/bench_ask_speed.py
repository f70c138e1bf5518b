"""Benchmark: lite `ask` against its models alone, on the same frames, at 224 px, 480p and 720p, 1 and 5 fps.

The videos are made from a real dev clip (a DAVIS sequence's 5 frames, 2 s each, panning one pixel
per frame so no two frames are the same image, at 30 fps, its recording looped to 10 s), H.264 + AAC,
at 224x224, 854x480 and 1280x720.

Both sides are whole processes, timed from the outside (start, imports, decoding, model loading, run),
median of ``--runs``:
- ``ask``: ``python -m avs_agent.apps.cli ask VIDEO --fps N`` (and once more with ``--out DIR``);
- models alone: one process that decodes the same frames and audio (``tools.media.load_clip``) and runs
  only the three lite models on them as ``ask`` does: YOLOX-nano at 416 on each frame (stretched to its
  display aspect), DeepLab at 513 on each frame and its mirror image, YAMNet over each frame's second
  and the whole clip. Preprocessing and decoding of the model outputs included; nothing else.

Peak memory is each process's own maximum resident set (``os.wait4``). Writes
``benchmarks/results/ask_speed.json`` and ``.md``; also, with ``--eval``, the dev-set eval's throughput
(clips per second, one worker, no perception cache).

    python benchmarks/bench_ask_speed.py [--runs 3] [--sizes 224,480,720] [--rates 1,5] [--eval]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AVS_AGENT_SHARED", ROOT.parent / "shared"))
CLIP = ("car_engine", "davis_car_shadow_engine_01")
SIZES = {224: (224, 224), 480: (854, 480), 720: (1280, 720)}
SECONDS, RATE = 10, 30


def make_video(path: Path, width: int, height: int) -> Path:
    """10 s, 30 fps, ``width`` x ``height`` H.264 + AAC from a dev clip's 5 frames and its looped audio."""
    import av
    import numpy as np
    from PIL import Image

    from avs_agent.tools.media import decode_audio, write_audio

    cat, name = CLIP
    base = SHARED / "data/davis_av_dev/s4_data"
    files = sorted((base / "visual_frames/test" / cat / name).glob("*.png"))
    wave = decode_audio(base / "audio_wav/test" / cat / f"{name}.wav")
    wave = np.tile(wave, 3)[: SECONDS * 16000].astype(np.float32)
    images = [
        np.asarray(Image.open(f).convert("RGB").resize((width, height), Image.Resampling.BICUBIC))
        for f in files
    ]
    n_frames = SECONDS * RATE
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=RATE)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        aus = out.add_stream("aac", rate=16000)
        aus.layout = "mono"
        for n in range(n_frames):
            image = np.roll(images[min(len(images) - 1, n * len(images) // n_frames)], n, axis=1)
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            vf.pts = n
            for p in vs.encode(vf):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        write_audio(out, aus, wave)
    return path


def models_alone(video: str, fps: float) -> dict:
    """In this process: decode ``video`` as ``ask`` does and run only the three lite models on it."""
    import numpy as np

    from avs_agent.agent.settings import load_settings
    from avs_agent.tools.lite.deeplab import DeepLabSegmenter
    from avs_agent.tools.lite.yamnet import YamnetTagger
    from avs_agent.tools.lite.yolox import YoloxDetector
    from avs_agent.tools.media import open_clip
    from avs_agent.tools.ops import stretch_to_aspect

    settings = load_settings("lite", overrides=[f"media.fps={fps}"])
    tools = settings.tool_config()
    t = tools.tools
    clip = open_clip(video, None, settings.media)
    tagger = YamnetTagger(
        tools.locate("tools.audio_tagger.model", t.audio_tagger.model, hub=False),
        tools.locate("tools.audio_tagger.class_map", t.audio_tagger.class_map, hub=False),
    )
    detector = YoloxDetector(tools.locate("tools.grounder.detector", t.grounder.detector, hub=False), 0.1)
    segmenter = DeepLabSegmenter(tools.locate("tools.grounder.segmenter", t.grounder.segmenter, hub=False))
    tagger.tag([*clip.segments, clip.audio])
    for frame in clip.frames:
        image, _ = stretch_to_aspect(frame)
        detector.detect(image)
        segmenter._forward(segmenter.preprocess(frame.image))
        segmenter._forward(segmenter.preprocess(np.ascontiguousarray(frame.image[:, ::-1])))
    return {"frames": len(clip.frames)}


def timed(cmd: list[str], env: dict) -> tuple[float, float, float, str]:
    """(wall seconds, CPU seconds (user + system), peak RSS MB of that process alone, its stdout) of one
    whole process."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (ru_maxrss in KB)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {err.read().strip()[-800:]}")
        return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, out.read()


def median_run(cmd: list[str], env: dict, runs: int) -> tuple[dict, str]:
    """The median wall and CPU time of ``runs`` whole processes, their highest peak RSS; and the last
    one's stdout."""
    seconds, cpu, peaks = [], [], []
    for _ in range(runs):
        s, c, peak, printed = timed(cmd, env)
        seconds.append(s)
        cpu.append(c)
        peaks.append(peak)
    return {
        "seconds": round(statistics.median(seconds), 2),
        "cpu_seconds": round(statistics.median(cpu), 2),
        "runs": [round(s, 2) for s in seconds],
        "peak_rss_mb": round(max(peaks), 1),
    }, printed


def eval_throughput(env: dict, out: Path) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "avs_agent.apps.cli",
        "eval",
        "--dataset",
        "avsbench-s4",
        "--root",
        str(SHARED / "data/davis_av_dev"),
        "--strategy",
        "agent",
        "--out",
        str(out),
        "--no-cache",
        "--quiet",
    ]
    seconds, cpu, peak, _ = timed(cmd, env)
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
    clips = summary.get("clips") or summary.get("n_clips") or 40
    return {
        "clips": clips,
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu, 1),
        "clips_per_s": round(clips / seconds, 3),
        "peak_rss_mb": round(peak, 1),
    }


def _best_ratio(r: dict) -> float:
    """``ask`` over models alone, each side's fastest run: on a shared machine the least disturbed one."""
    return round(min(r["ask"]["runs"]) / min(r["models"]["runs"]), 2)


def _table(rows: list[dict]) -> list[str]:
    lines = [
        "| video | fps | frames | `ask` s (median, best) | models alone s (median, best) | ratio | ratio of bests "
        "| CPU s: `ask` / models | CPU ratio | `ask` s/frame | `ask` peak MB | `ask --out` s | `--out` overhead |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out = r.get("ask_out") or {}
        over = ""
        if out:
            over = (
                f"{out['seconds'] / r['ask']['seconds'] - 1:+.0%} "
                f"(CPU {out['cpu_seconds'] / r['ask']['cpu_seconds'] - 1:+.0%})"
            )
        a, m = r["ask"], r["models"]
        lines.append(
            f"| {r['size']} | {r['fps']:g} | {r['frames']} | {a['seconds']}, {min(a['runs'])} "
            f"| {m['seconds']}, {min(m['runs'])} | {r['ratio']}x | {_best_ratio(r)}x "
            f"| {a['cpu_seconds']} / {m['cpu_seconds']} | {r['cpu_ratio']}x "
            f"| {r['ask_seconds_per_frame']} | {a['peak_rss_mb']:.0f} | {out.get('seconds', '')} | {over} |"
        )
    return lines


def write_md(report: dict, path: Path) -> None:
    lines = [
        "# lite `ask` against its models alone (`benchmarks/bench_ask_speed.py`)",
        "",
        f"{report['video']}. Whole processes (start, imports, decoding, model loading, run), "
        f"median of {report['runs']} runs; {report['machine']['note']}: wall times vary by up to 2x between "
        "runs, so the CPU time (user + system) and the ratio of each side's fastest run are given too. "
        f"Measured {report['date']}.",
        "",
        *_table(report["results"]),
    ]
    if report.get("before"):
        b = report["before"]
        lines += [
            "",
            f"Before (the code of {b['commit']}, the same videos, median of {b['runs']} run(s), "
            f"{b['date']}):",
            "",
            *_table(b["results"]),
        ]
    if report.get("cold_store"):
        c = report["cold_store"]
        lines += ["", f"First ask on a machine ({c['what']}): {c['seconds']} s, {c['cpu_seconds']} s CPU."]
    if report.get("eval"):
        e = report["eval"]
        lines += [
            "",
            f"Dev-set eval (agent, one worker, no perception cache): {e['clips']} clips in {e['seconds']} s "
            f"({e['cpu_seconds']} s CPU), {e['clips_per_s']} clips/s, peak {e['peak_rss_mb']:.0f} MB.",
        ]
        if e.get("before"):
            eb = e["before"]
            lines.append(
                f"Before ({eb['commit']}): {eb['seconds']} s ({eb['cpu_seconds']} s CPU), "
                f"{eb['clips_per_s']} clips/s, peak {eb['peak_rss_mb']:.0f} MB; {eb['note']}."
            )
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sizes", default="224,480,720")
    ap.add_argument("--rates", default="1,5")
    ap.add_argument("--out-overhead", default="480", help="sizes at which `ask --out` is timed too")
    ap.add_argument("--eval", action="store_true", help="also time the dev-set eval (clips/s)")
    ap.add_argument("--cold", action="store_true", help="also time one ask with an empty embedding store")
    ap.add_argument("--note", default="2 cores, shared with other jobs while measured")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/ask_speed.json")
    ap.add_argument("--md-from", type=Path, help="only write the .md of this JSON report (beside it)")
    ap.add_argument("--models-alone", nargs=2, metavar=("VIDEO", "FPS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.models_alone:
        print(json.dumps(models_alone(args.models_alone[0], float(args.models_alone[1]))))
        return
    if args.md_from:
        write_md(json.loads(args.md_from.read_text()), args.md_from.with_suffix(".md"))
        return
    env = dict(os.environ)
    env.setdefault("AVS_AGENT_MODELS_DIR", str(SHARED / "models"))
    env["PYTHONPATH"] = str(ROOT)
    py = sys.executable
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        # the steady state: the label embeddings of these clips are in the store (the first ask on a
        # machine computes them once; timed separately below, with an empty store)
        warm = str(make_video(Path(tmp) / "warm.mp4", *SIZES[224]))
        timed([py, "-m", "avs_agent.apps.cli", "ask", warm, "--json"], env)
        for size in [int(s) for s in args.sizes.split(",")]:
            w, h = SIZES[size]
            video = str(make_video(Path(tmp) / f"video_{size}.mp4", w, h))
            for fps in [float(r) for r in args.rates.split(",")]:
                ask = [py, "-m", "avs_agent.apps.cli", "ask", video, "--fps", f"{fps:g}", "--json"]
                row = {"size": f"{w}x{h}", "fps": fps}
                row["ask"], _ = median_run(ask, env, args.runs)
                models = [py, __file__, "--models-alone", video, f"{fps:g}"]
                row["models"], printed = median_run(models, env, args.runs)
                row["frames"] = json.loads(printed.strip().splitlines()[-1])["frames"]
                if str(size) in args.out_overhead.split(","):
                    row["ask_out"], _ = median_run([*ask, "--out", str(Path(tmp) / "out")], env, args.runs)
                row["ratio"] = round(row["ask"]["seconds"] / row["models"]["seconds"], 2)
                row["cpu_ratio"] = round(row["ask"]["cpu_seconds"] / row["models"]["cpu_seconds"], 2)
                row["best_ratio"] = _best_ratio(row)
                row["ask_seconds_per_frame"] = round(row["ask"]["seconds"] / row["frames"], 3)
                row["models_seconds_per_frame"] = round(row["models"]["seconds"] / row["frames"], 3)
                results.append(row)
                print(json.dumps(row), flush=True)
        report = {
            "benchmark": "bench_ask_speed",
            "video": f"{SECONDS} s, {RATE} fps H.264 + AAC from dev clip {CLIP[1]} (5 frames held 2 s each, "
            "panning 1 px per frame, audio looped)",
            "profile": "lite",
            "runs": args.runs,
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "note": args.note,
            },
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "results": results,
        }
        if args.cold:
            cold_env = {**env, "XDG_CACHE_HOME": str(Path(tmp) / "empty_cache")}
            s, c, peak, _ = timed([py, "-m", "avs_agent.apps.cli", "ask", warm, "--json"], cold_env)
            report["cold_store"] = {
                "what": "one ask (224 px, 1 fps) with an empty embedding store: the vocabularies embedded once",
                "seconds": round(s, 2),
                "cpu_seconds": round(c, 2),
                "peak_rss_mb": round(peak, 1),
            }
            print(json.dumps(report["cold_store"]), flush=True)
        if args.eval:
            report["eval"] = eval_throughput(env, Path(tmp) / "eval")
            print(json.dumps(report["eval"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    write_md(report, args.out.with_suffix(".md"))


if __name__ == "__main__":
    main()
