"""LangGraph's own server runs the graph as langgraph.json declares it: `langgraph dev` (the in-memory
server of langgraph-cli[inmem]) on loopback, one dev clip through its HTTP API (POST /runs/wait, no
context: the run context is built from plain configuration), and the answer's masks equal `ask`'s."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import PROJECT_ROOT, dev_clip_paths

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict, timeout: float) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def test_langgraph_dev_server_answers_like_ask(dev_set, tmp_path):
    cli = Path(sys.executable).with_name("langgraph")
    if not cli.exists():
        if os.environ.get("CI"):
            pytest.fail("langgraph-cli[inmem] is not installed (the dev extra has it)")
        pytest.skip("langgraph-cli[inmem] is not installed")
    from avs_agent.agent.run import run_media
    from avs_agent.agent.settings import load_settings

    frames, wav, _ = dev_clip_paths("pets_great_pyrenees_176_bark_01")
    expected, _ = run_media(frames, load_settings(), audio=wav)
    port = _free_port()
    env = {**os.environ, "LANGSMITH_TRACING": "false", "LANGGRAPH_CLI_NO_ANALYTICS": "1"}
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [str(cli), "dev", "--no-reload", "--no-browser", "--host", "127.0.0.1", "--port", str(port)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"{base}/ok", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("langgraph dev did not start:\n" + (tmp_path / "server.log").read_text()[-3000:])
        assistants = _post(f"{base}/assistants/search", {"graph_id": "avs-agent"}, 30)
        assert [a["graph_id"] for a in assistants] == ["avs-agent"]
        out = _post(
            f"{base}/runs/wait",
            {
                "assistant_id": "avs-agent",
                "input": {
                    "media": str(frames),
                    "audio_path": str(wav),
                    "question": "what is making the sound?",
                },
            },
            timeout=240,
        )
        # a close call on a thread: the run pauses with the interrupt, and resuming it with the
        # person's choice ({"command": {"resume": ...}}) segments what they chose
        close, close_wav, _ = dev_clip_paths("davis_scooter_black_engine_03")
        thread = _post(f"{base}/threads", {}, 30)["thread_id"]
        context = {"overrides": ["agent.ask_person=true", "agent.ask_margin=0.5"]}
        paused = _post(
            f"{base}/threads/{thread}/runs/wait",
            {
                "assistant_id": "avs-agent",
                "input": {"media": str(close), "audio_path": str(close_wav)},
                "context": context,
            },
            timeout=240,
        )
        resumed = _post(
            f"{base}/threads/{thread}/runs/wait",
            {"assistant_id": "avs-agent", "command": {"resume": "1"}, "context": context},
            timeout=240,
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    answer = out["answer"]
    assert answer["labels"] == expected.labels == ["dog"]
    masks = [np.asarray(m, bool) for m in answer["masks"]]
    assert len(masks) == len(expected.masks)
    assert all((a == b).all() for a, b in zip(masks, expected.masks, strict=True))
    (asked,) = paused["__interrupt__"]
    assert "1 = person, 2 = motorcycle" in asked["value"]["question"] and "answer" not in paused
    assert resumed["answer"]["labels"] == ["person"]
