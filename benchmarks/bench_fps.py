"""Benchmark: lite `ask` on a 10 s video at 1, 5 and 10 analysed frames per second.

The video is made from a real dev clip (a DAVIS sequence's frames, each held 2 s, at 25 fps, with its
recording looped to 10 s), so the detector and segmenter see a real scene. Each rate runs in its own
process (models loaded and warmed on an ask about a noise video, so no cache holds the timed video's frames), so the peak memory is that
rate's alone. Writes ``benchmarks/results/fps_lite.json`` (or ``--out FILE``).

    python benchmarks/bench_fps.py [--rates 1,5,10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AVS_AGENT_SHARED", ROOT.parent / "shared"))
CLIP = ("car_engine", "davis_car_shadow_engine_01")


def make_video(path: Path, noise: bool = False) -> Path:
    """10 s, 25 fps, 448x252 H.264 + AAC from a dev clip's 5 frames (2 s each, panning one pixel per
    frame so every frame differs) and its looped audio;
    ``noise``: random pixels and noise instead (to warm the models up without filling their caches)."""
    import av
    import numpy as np
    from PIL import Image

    from avs_agent.tools.media import decode_audio, write_audio

    cat, name = CLIP
    base = SHARED / "data/davis_av_dev/s4_data"
    frames = sorted((base / "visual_frames/test" / cat / name).glob("*.png"))
    wave = decode_audio(base / "audio_wav/test" / cat / f"{name}.wav")
    wave = np.tile(wave, 3)[: 10 * 16000].astype(np.float32)
    images = [np.asarray(Image.open(f).convert("RGB").resize((448, 252))) for f in frames]
    if noise:
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 255, (252, 448, 3), dtype=np.uint8) for _ in frames]
        wave = (0.1 * rng.standard_normal(len(wave))).astype(np.float32)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 448, 252, "yuv420p"
        aus = out.add_stream("aac", rate=16000)
        aus.layout = "mono"
        for n in range(250):
            # a slow pan (one pixel per frame) so no two frames are the same image
            image = np.roll(images[min(len(images) - 1, n // 50)], n, axis=1)
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            vf.pts = n
            for p in vs.encode(vf):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        write_audio(out, aus, wave)
    return path


def one_rate(video: str, warm: str, fps: float) -> dict:
    """In this process: warm up on the noise video, then time one ask at ``fps``."""
    from avs_agent.agent.run import run_media
    from avs_agent.agent.settings import load_settings

    settings = load_settings("lite", overrides=[f"media.fps={fps}"])
    run_media(warm, load_settings("lite"))  # loads and warms the models, caching nothing of ``video``
    t0 = time.perf_counter()
    answer, clip = run_media(video, settings)
    seconds = time.perf_counter() - t0
    return {
        "fps": fps,
        "frames": len(clip.frames),
        "seconds": round(seconds, 2),
        "seconds_per_frame": round(seconds / len(clip.frames), 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "labels": answer.labels,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="1,5,10")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/fps_lite.json")
    ap.add_argument("--one", nargs=3, metavar=("VIDEO", "WARM", "FPS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_rate(args.one[0], args.one[1], float(args.one[2]))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        video = str(make_video(Path(tmp) / "ten_seconds.mp4"))
        warm = str(make_video(Path(tmp) / "noise.mp4", noise=True))
        results = []
        for fps in [float(r) for r in args.rates.split(",")]:
            done = subprocess.run(
                [sys.executable, __file__, "--one", video, warm, str(fps)],
                capture_output=True,
                text=True,
                check=True,
            )
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(results[-1], flush=True)
    report = {
        "benchmark": "bench_fps",
        "video": f"10 s, 25 fps, 448x252, from dev clip {CLIP[1]} (5 frames held 2 s each, panning 1 px per frame, audio looped)",
        "profile": "lite",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
