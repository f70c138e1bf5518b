"""Load test of the lite tool server (loopback only, bounded in requests and time).

N concurrent clients against `avs-agent serve --profile lite` (a subprocess on 127.0.0.1, token set),
once with batching off (serve.max_batch_size=1) and once with batching on, and the same work called
in-process (one thread, the tools directly). Three workloads:

- detect: grounder.detect_all on distinct dev frames (YOLOX-nano + DeepLabV3, the heaviest lite call)
- tag:    tagger.tag on 5 one-second segments + the 5-s clip of a dev clip (YAMNet)
- clip:   the whole agent (run_clip) on the first 20 dev clips, tools through the remote backend
          (cold: each new audio label costs the text matcher an embedding the first time)
- clip2:  the same on the other 20 dev clips, run after clip (warm text-embedding memo: steady state)

The machine's 1-minute load average before and after each run is recorded: on a shared 2-core machine
other processes change the numbers a lot. Reports throughput, p50/p95 latency and the batch sizes the server saw (from /metrics). Writes
benchmarks/results/serve_load.json.

    .venv/bin/python benchmarks/bench_serve_load.py [--clients 20] [--requests 200] [--batch 8] [--max-seconds 60]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import secrets
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AVS_AGENT_SHARED", ROOT.parent / "shared"))
DEV = SHARED / "data" / "davis_av_dev"


def dev_clips() -> list[tuple[Path, Path]]:
    rows = list(csv.DictReader(open(DEV / "s4_meta_data.csv")))
    base = DEV / "s4_data"
    return [
        (
            base / "visual_frames/test" / r["category"] / r["name"],
            base / "audio_wav/test" / r["category"] / f"{r['name']}.wav",
        )
        for r in rows
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


class Server:
    """`avs-agent serve` in a subprocess on a free loopback port."""

    def __init__(self, batch: int, wait_s: float, token: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, AVS_AGENT_TOKEN=token, AVS_AGENT_MODELS_DIR=str(SHARED / "models"))
        cmd = [sys.executable, "-m", "avs_agent.apps.cli", "serve", "--port", str(self.port), "--log-level", "warning",
               "--set", f"serve.max_batch_size={batch}", "--set", f"serve.batch_wait_s={wait_s}"]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT
        )
        self.headers = {"Authorization": f"Bearer {token}"}

    def wait_ready(self, timeout: float = 180) -> float:
        import httpx

        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", headers=self.headers, timeout=2).status_code == 200:
                    return time.perf_counter() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server not ready in time")

    def batch_stats(self) -> dict[str, dict[str, float]]:
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{self.url}/metrics", headers=self.headers).text
        out: dict[str, dict[str, float]] = {}
        for fam in text_string_to_metric_families(text):
            if fam.name != "avs_serve_batch_size":
                continue
            for s in fam.samples:
                m = out.setdefault(s.labels["method"], {})
                if s.name.endswith("_sum"):
                    m["calls"] = s.value
                elif s.name.endswith("_count"):
                    m["batches"] = s.value
                elif s.name.endswith("_bucket") and s.labels["le"] == "1.0":
                    m["batches_of_1"] = s.value
        for m in out.values():
            m["mean_batch"] = round(m["calls"] / m["batches"], 2) if m.get("batches") else 0.0
        return out

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def make_jobs(workload: str, n: int) -> list:
    """n distinct inputs: frames (each a different dev frame; rolled copies once the 200 run out),
    audio lists, or clips."""
    from PIL import Image

    from avs_agent.tools.media import load_clip
    from avs_agent.tools.types import Frame

    clips = dev_clips()
    if workload == "detect":
        # dev frames repeat within a clip: each job's frame is rolled by its own offset, so every
        # request is a new image for the grounder's per-frame cache
        paths = [p for frames, _ in clips for p in sorted(frames.glob("*.png"))]
        out = []
        for i in range(n):
            img = np.asarray(Image.open(paths[i % len(paths)]).convert("RGB"))
            out.append(Frame(index=0, time_s=0.5, image=np.ascontiguousarray(np.roll(img, 1 + i, axis=1))))
        return out
    loaded = [load_clip(f, w) for f, w in clips]
    if workload == "tag":
        return [[*loaded[i % len(loaded)].segments, loaded[i % len(loaded)].audio] for i in range(n)]
    if workload == "clip":  # the first half of the dev clips: the server's caches start cold
        return [loaded[i % (len(loaded) // 2)] for i in range(n)]
    half = len(loaded) // 2  # clip2: the other half, after clip warmed the text-embedding memo
    return [loaded[half + i % (len(loaded) - half)] for i in range(n)]


def run_clients(fn, jobs: list, clients: int, max_seconds: float) -> dict:
    """``clients`` threads take jobs from a shared list until it is empty or time is up."""
    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    it = iter(range(len(jobs)))
    deadline = time.perf_counter() + max_seconds
    barrier = threading.Barrier(clients)

    def client(_):
        barrier.wait()
        while time.perf_counter() < deadline:
            with lock:
                i = next(it, None)
            if i is None:
                return
            t0 = time.perf_counter()
            try:
                fn(jobs[i])
            except Exception as exc:  # counted, not raised: the run goes on
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            with lock:
                lat.append(time.perf_counter() - t0)

    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - t0
    return {
        "requests_ok": len(lat),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "wall_s": round(wall, 3),
        "throughput_per_s": round(len(lat) / wall, 2),
        "p50_s": round(pct(lat, 50), 4),
        "p95_s": round(pct(lat, 95), 4),
        "loadavg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def call_for(workload: str, toolset, settings):
    from avs_agent.agent.run import run_clip

    if workload == "detect":
        return toolset.grounder.detect_all
    if workload == "tag":
        return toolset.tagger.tag
    return lambda clip: run_clip(clip, settings, toolset)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument(
        "--requests", type=int, default=200, help="requests per run (detect, tag); clip runs use a fifth"
    )
    ap.add_argument("--batch", type=int, default=8, help="serve.max_batch_size of the batching run")
    ap.add_argument("--wait", type=float, default=0.01, help="serve.batch_wait_s of the batching run")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="time cap per run")
    ap.add_argument("--workloads", default="detect,tag,clip,clip2")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_load.json")
    args = ap.parse_args()
    os.environ.setdefault("AVS_AGENT_MODELS_DIR", str(SHARED / "models"))
    sys.path.insert(0, str(ROOT / "src"))

    from avs_agent.agent.settings import load_settings
    from avs_agent.tools.server.remote import build_remote_toolset
    from avs_agent.tools.wiring import build_toolset

    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    jobs = {w: make_jobs(w, args.requests if w in ("detect", "tag") else args.clients) for w in workloads}
    results: dict = {
        "benchmark": "lite tool server under concurrent clients (loopback), vs batch size 1 and in-process",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "clients": args.clients,
        "runs": {},
    }

    # in-process: one thread calling the tools directly (fresh toolset: empty caches, models warmed first)
    local_settings = load_settings()
    local = build_toolset(local_settings.tool_config())
    for name in ("tagger", "grounder", "scorer", "matcher"):
        getattr(local, name).warm_up()
    for w in workloads:
        r = run_clients(call_for(w, local, local_settings), jobs[w], 1, args.max_seconds)
        results["runs"][f"{w}/in-process (1 thread)"] = r
        print(w, "in-process", r, flush=True)

    token = secrets.token_hex(16)
    os.environ["AVS_AGENT_TOKEN"] = token
    for label, batch, wait in (
        ("batch size 1", 1, 0.0),
        (f"batching (max {args.batch}, {args.wait * 1000:g} ms window)", args.batch, args.wait),
    ):
        server = Server(batch, wait, token)
        try:
            ready_s = server.wait_ready()
            remote_settings = load_settings(overrides=[f"tools.backend={server.url}"])
            remote = build_remote_toolset(remote_settings.tool_config())
            for w in workloads:
                r = run_clients(call_for(w, remote, remote_settings), jobs[w], args.clients, args.max_seconds)
                results["runs"][f"{w}/server, {label}"] = r
                print(w, label, r, flush=True)
            results.setdefault("server_batches", {})[label] = server.batch_stats()
            results.setdefault("server_ready_s", {})[label] = round(ready_s, 1)
        finally:
            server.stop()

    speedups = {}
    for w in workloads:
        one = results["runs"].get(f"{w}/server, batch size 1", {}).get("throughput_per_s")
        many = next(
            (
                v["throughput_per_s"]
                for k, v in results["runs"].items()
                if k.startswith(f"{w}/server, batching")
            ),
            None,
        )
        inproc = results["runs"].get(f"{w}/in-process (1 thread)", {}).get("throughput_per_s")
        if one and many:
            speedups[w] = {
                "batching_vs_batch1": round(many / one, 2),
                "batching_vs_in_process": round(many / inproc, 2) if inproc else None,
            }
    results["speedup"] = speedups
    results["target"] = "20 clients: batching >= 2x the throughput of batch size 1"
    results["meets_target"] = bool(speedups) and all(s["batching_vs_batch1"] >= 2 for s in speedups.values())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({"speedup": speedups, "server_batches": results.get("server_batches")}, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
