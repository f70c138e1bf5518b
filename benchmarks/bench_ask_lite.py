"""Lite `ask` on 5-s dev clips: model load time, per-clip time and peak memory (this machine).

Writes benchmarks/results/ask_lite.json. Target (issue 2): after the models load, a 5-s clip in <= 1.5 s
and <= 1.5 GB peak memory.

    .venv/bin/python benchmarks/bench_ask_lite.py [--clips N]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AVS_AGENT_SHARED", ROOT.parent / "shared"))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ask_lite.json")
    args = parser.parse_args()
    os.environ.setdefault("AVS_AGENT_MODELS_DIR", str(SHARED / "models"))

    from avs_agent.agent.run import run_clip
    from avs_agent.agent.settings import load_settings
    from avs_agent.tools.media import load_clip
    from avs_agent.tools.wiring import get_toolset

    dev = SHARED / "data" / "davis_av_dev"
    rows = list(csv.DictReader(open(dev / "s4_meta_data.csv")))[: args.clips]
    paths = [
        (
            dev / "s4_data/visual_frames/test" / r["category"] / r["name"],
            dev / "s4_data/audio_wav/test" / r["category"] / f"{r['name']}.wav",
        )
        for r in rows
    ]

    settings = load_settings()
    rss0 = peak_rss_mb()
    t0 = time.perf_counter()
    toolset = get_toolset(settings.tool_config())
    first = load_clip(*paths[0])
    run_clip(first, settings, toolset)  # loads every model (lazy) on the first clip
    load_s = time.perf_counter() - t0

    per_clip, load_media = [], []
    for frames, wav in paths:
        t1 = time.perf_counter()
        clip = load_clip(frames, wav)
        t2 = time.perf_counter()
        run_clip(clip, settings, toolset)
        t3 = time.perf_counter()
        load_media.append(t2 - t1)
        per_clip.append(t3 - t1)
    result = {
        "benchmark": "lite ask, 5-s dev clips (5 frames 224x224 + 5 s audio)",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "clips": len(per_clip),
        "first_clip_incl_model_load_s": round(load_s, 3),
        "per_clip_s": {
            "mean": round(statistics.mean(per_clip), 3),
            "median": round(statistics.median(per_clip), 3),
            "max": round(max(per_clip), 3),
        },
        "per_clip": {r["name"]: round(t, 3) for r, t in zip(rows, per_clip, strict=True)},
        "media_load_s_mean": round(statistics.mean(load_media), 4),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_before_models_mb": round(rss0, 1),
        "target": {"per_clip_s": 1.5, "peak_mb": 1536},
    }
    result["meets_target"] = result["per_clip_s"]["max"] <= 1.5 and result["peak_rss_mb"] <= 1536
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
