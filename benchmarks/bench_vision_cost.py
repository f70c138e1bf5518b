"""What the vision decision would cost with GPT-4o, per dev clip (issue 13): the real requests the agent
builds for each clip (recorded by a local OpenAI-compatible fake server that answers like the rules),
their text tokens (LangChain's approximate count) and image tokens (OpenAI's published formula for the
detail level), the calls per clip, and a price from per-million-token rates given on the command line.

Writes benchmarks/results/vision_cost.json.

    .venv/bin/python benchmarks/bench_vision_cost.py [--clips N] [--detail high|low]
        [--usd-in 2.5 --usd-out 10]   # GPT-4o's list price per million tokens when this was written

A real run: point ``llm.base_url``/``OPENAI_API_KEY`` at the provider and use ``avs-agent eval`` (docs/llm.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AVS_AGENT_SHARED", ROOT.parent / "shared"))


def image_tokens(width: int, height: int, detail: str) -> int:
    """OpenAI's count for one image (GPT-4o): low = 85; high = fit in 2048 x 2048, shortest side to
    768, then 85 + 170 per 512-px tile."""
    if detail == "low":
        return 85
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = 768 / min(w, h)
    w, h = w * scale, h * scale
    return 85 + 170 * math.ceil(w / 512) * math.ceil(h / 512)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=40)
    parser.add_argument("--detail", default="high", choices=["high", "low"])
    parser.add_argument("--usd-in", type=float, default=2.5, help="USD per million input tokens")
    parser.add_argument("--usd-out", type=float, default=10.0, help="USD per million output tokens")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "vision_cost.json")
    args = parser.parse_args()
    os.environ.setdefault("AVS_AGENT_MODELS_DIR", str(SHARED / "models"))
    sys.path.insert(0, str(ROOT))

    from langchain_core.messages.utils import count_tokens_approximately
    from tests.fake_llm import FakeLLMServer, images, legend

    from avs_agent.agent.run import run_clip
    from avs_agent.agent.settings import load_settings
    from avs_agent.tools.media import load_clip
    from avs_agent.tools.wiring import get_toolset

    def first_boxes(body: dict) -> dict:  # an answer of typical length: each frame's first box
        return {f"frame_{t}": [b[0][0]] for t, b in legend(body).items() if b} | {
            "reason": "The dog in the middle of every frame is barking; nothing else is heard.",
        }

    dev = SHARED / "data" / "davis_av_dev"
    rows = list(csv.DictReader(open(dev / "s4_meta_data.csv")))[: args.clips]
    per_clip = []
    with FakeLLMServer("openai", [{"reply": first_boxes}]) as srv:
        s = load_settings(
            overrides=[
                "llm.backend=openai",
                f"llm.base_url={srv.url}",
                "llm.model=gpt-4o",
                f"llm.vision_detail={args.detail}",
            ]
        )
        tools = get_toolset(s.tool_config())
        for r in rows:
            base = dev / "s4_data"
            clip = load_clip(
                base / "visual_frames/test" / r["category"] / r["name"],
                base / "audio_wav/test" / r["category"] / f"{r['name']}.wav",
            )
            n0 = len(srv.requests)
            run_clip(clip, s, tools)
            text = image = 0
            for req in srv.requests[n0:]:
                msgs = req["body"]["messages"]
                plain = [
                    {
                        "role": m["role"],
                        "content": m["content"]
                        if isinstance(m["content"], str)
                        else "".join(p.get("text", "") for p in m["content"] if p.get("type") == "text"),
                    }
                    for m in msgs
                ]
                text += count_tokens_approximately(plain)
                image += sum(image_tokens(*im.size, args.detail) for im in images(req["body"]))
            out_tokens = len(json.dumps(first_boxes(srv.requests[n0]["body"]))) // 4
            per_clip.append(
                {
                    "clip": r["name"],
                    "calls": len(srv.requests) - n0,
                    "text_tokens": text,
                    "image_tokens": image,
                    "image_size": list(images(srv.requests[n0]["body"])[0].size),
                    "output_tokens_typical": out_tokens,
                    "usd": round(((text + image) * args.usd_in + out_tokens * args.usd_out) / 1e6, 5),
                }
            )
    result = {
        "what": "GPT-4o vision decision per dev clip: requests as the agent builds them (lite tools)",
        "detail": args.detail,
        "usd_per_million": {"input": args.usd_in, "output": args.usd_out},
        "max_side": s.llm.vision_max_side,
        "clips": len(per_clip),
        "mean_calls": round(statistics.mean(c["calls"] for c in per_clip), 3),
        "mean_text_tokens": round(statistics.mean(c["text_tokens"] for c in per_clip)),
        "mean_image_tokens": round(statistics.mean(c["image_tokens"] for c in per_clip)),
        "mean_usd": round(statistics.mean(c["usd"] for c in per_clip), 5),
        "max_usd": max(c["usd"] for c in per_clip),
        "per_clip": per_clip,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "per_clip"}, indent=2))


if __name__ == "__main__":
    main()
