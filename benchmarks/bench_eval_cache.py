"""Benchmark: a second strategy over cached perception vs the first run (target >= 5x faster).

Runs on the dev set (S4 layout, ``$AVS_AGENT_SHARED/data/davis_av_dev`` by default) with the lite
profile. Each pair gets a freshly built toolset (no tool's in-memory cache carries over) whose models
are loaded and warmed on a synthetic clip (random pixels and noise, not a dev clip) before timing,
so the first run's time is perception + reasoning, not model loading. Pairs timed, each with a fresh
cache folder:

* ``segment-all`` (cold cache) then ``openavs`` (a different strategy: only the calls they share hit);
* ``agent`` (cold cache) then ``agent`` again into another run folder (e.g. another LLM backend
  would reuse the same perception).

Writes ``benchmarks/results/bench_eval_cache.json`` (or ``--out FILE``).

    MPLBACKEND=Agg python benchmarks/bench_eval_cache.py [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AVS_AGENT_SHARED", ROOT.parent / "shared"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=SHARED / "data" / "davis_av_dev")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_eval_cache.json")
    args = ap.parse_args()

    import numpy as np

    from avs_agent.agent.settings import load_settings
    from avs_agent.evals.datasets import load_dataset
    from avs_agent.evals.runner import run_eval
    from avs_agent.evals.strategies import get_strategy
    from avs_agent.tools.cache import cached_toolset, settings_fingerprint
    from avs_agent.tools.media import assemble_clip
    from avs_agent.tools.types import SAMPLE_RATE, Frame
    from avs_agent.tools.wiring import build_toolset

    settings = load_settings("lite")
    ds = load_dataset("avsbench-s4", args.root, "test", limit=args.limit)
    rng = np.random.default_rng(0)
    frames = [Frame(i, i + 0.5, rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)) for i in range(2)]
    warm_clip = assemble_clip(
        "warm-up",
        frames,
        (0.1 * rng.standard_normal(2 * SAMPLE_RATE)).astype(np.float32),
        one_segment=False,
        meta={},
    )

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for first, second in (("segment-all", "openavs"), ("agent", "agent")):
            base = build_toolset(settings.tool_config())
            for name in ("segment-all", "agent"):
                get_strategy(name).solve(warm_clip, base, settings)  # load and warm every model (not timed)
            cache = Path(tmp) / f"cache-{first}"
            times = {}
            for i, strat in enumerate((first, second)):
                ts = cached_toolset(base, cache, settings_fingerprint(settings.tool_config()))
                t0 = time.perf_counter()
                summary = run_eval(
                    "avsbench-s4",
                    args.root,
                    "test",
                    strat,
                    Path(tmp) / f"{first}-{i}-{strat}",
                    settings,
                    limit=args.limit,
                    toolset=ts,
                    cache_dir=cache,
                    progress=False,
                )
                times[i] = (time.perf_counter() - t0, summary["J"], ts.cache.stats())
            (t1, j1, s1), (t2, j2, s2) = times[0], times[1]
            results.append(
                {
                    "first": first,
                    "second": second,
                    "clips": len(ds),
                    "first_seconds": round(t1, 3),
                    "second_seconds": round(t2, 3),
                    "speedup": round(t1 / t2, 2),
                    "first_J": round(j1, 4),
                    "second_J": round(j2, 4),
                    "first_cache": s1,
                    "second_cache": s2,
                    "target_met": t1 / t2 >= 5.0,
                }
            )
            print(json.dumps(results[-1]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "bench_eval_cache",
                "dataset": str(args.root),
                "profile": "lite",
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                },
                "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                "results": results,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
