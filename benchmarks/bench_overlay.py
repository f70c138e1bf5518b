"""Benchmark: what writing overlay.mp4 costs, at the source's frame rate and capped at
``output.video_max_fps`` (10 by default), in one process on the same answer.

The video is the one ``bench_ask_speed.py`` makes (a DAVIS clip's frames panning at 30 fps, 10 s, its
recording looped), at 854x480. ``ask`` runs once (lite, 1 fps); then ``apps.output.write_overlay_video``
writes the overlay ``--runs`` times per setting, alternating, timed in-process (wall and CPU seconds of
this process, x264's threads included), so the rest of ``ask`` and the process start do not blur the
difference (whole-process timings of ``ask --out`` on the shared 2-core machine move by a second
from run to run). Writes ``benchmarks/results/overlay.json`` and ``.md``.

    python benchmarks/bench_overlay.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/overlay.json")
    args = ap.parse_args()
    import sys

    import av

    sys.path.insert(0, str(ROOT))  # run as a script: the checkout's benchmarks package

    from benchmarks.bench_ask_speed import make_video

    from avs_agent.agent.run import run_media
    from avs_agent.agent.settings import load_settings
    from avs_agent.apps.output import write_overlay_video

    settings = load_settings("lite")
    caps = (0.0, settings.output.video_max_fps)
    times: dict[float, list[tuple[float, float]]] = {c: [] for c in caps}
    frames: dict[float, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        video = make_video(Path(tmp) / "v480.mp4", 854, 480)
        answer, clip = run_media(video, settings)
        for _ in range(args.runs):
            for cap in caps:
                path = Path(tmp) / f"overlay_{cap:g}.mp4"
                t0, c0 = time.perf_counter(), time.process_time()
                write_overlay_video(answer, clip, path, max_fps=cap)
                times[cap].append((time.perf_counter() - t0, time.process_time() - c0))
                with av.open(str(path)) as c:
                    frames[cap] = c.streams.video[0].frames
    rows = [
        {
            "video_max_fps": cap,
            "overlay_frames": frames[cap],
            "seconds": round(statistics.median(w for w, _ in times[cap]), 3),
            "cpu_seconds": round(statistics.median(c for _, c in times[cap]), 3),
            "runs": [round(w, 3) for w, _ in times[cap]],
        }
        for cap in caps
    ]
    result = {
        "video": "854x480, 30 fps, 10 s (bench_ask_speed.make_video); ask at 1 fps, lite, rules",
        "rows": rows,
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "| `output.video_max_fps` | overlay.mp4 frames | wall s (median) | CPU s (median) |",
        "|---|---|---|---|",
        *(
            f"| {r['video_max_fps']:g}{' (the source rate)' if not r['video_max_fps'] else ''} | "
            f"{r['overlay_frames']} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} |"
            for r in rows
        ),
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
