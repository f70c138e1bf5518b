"""The tool server (tools.server.app), its wire format (tools.server.wire) and the remote backend (tools.server.remote).

Fast unit tests use fake tools through the ASGI app in-process; the end-to-end tests start the real lite
server on a free loopback port (uvicorn in a thread) and ask about a real dev clip through it."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import subprocess
import sys
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from PIL import Image
from tests.conftest import SHARED, dev_clip_paths
from typer.testing import CliRunner

from avs_agent.agent.settings import load_settings
from avs_agent.apps.cli import app as cli_app
from avs_agent.tools.errors import ConfigError, ModelNotFoundError, UserError
from avs_agent.tools.server import wire
from avs_agent.tools.server.app import LocalDispatcher, check_bind, create_app, parse_tools, run_batch
from avs_agent.tools.server.remote import RemoteClient, ToolServerError, build_remote_toolset
from avs_agent.tools.server.settings import is_loopback
from avs_agent.tools.types import AudioSegment, AudioTags, Captions, Frame, Segments

TOKEN = "test-token-0123456789"
runner = CliRunner()


# ------------------------------------------------------------------------------------------ helpers
class ServerThread:
    """uvicorn serving ``app`` on a free 127.0.0.1 port in a daemon thread."""

    def __init__(self, app):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
        )
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric_samples(text: str, name: str) -> dict[tuple, float]:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def batches_over_one(metrics_text: str, method: str, metric: str = "avs_serve_batch_size") -> int:
    """How many batches of ``method`` held more than one call (from the batch-size histogram; with
    ``avs_serve_request_batch_size``: how many requests were served in such a batch)."""
    buckets = metric_samples(metrics_text, f"{metric}_bucket")
    total = buckets[(("le", "+Inf"), ("method", method))]
    ones = buckets[(("le", "1.0"), ("method", method))]
    return int(total - ones)


def seg(start: float = 0.0, seconds: float = 1.0, value: float = 0.0) -> AudioSegment:
    return AudioSegment(start, start + seconds, np.full(int(16000 * seconds), value, np.float32))


def frame(i: int = 0, h: int = 24, w: int = 32, aspect: float | None = None) -> Frame:
    rng = np.random.default_rng(i)
    return Frame(
        index=i, time_s=i + 0.5, image=rng.integers(0, 255, (h, w, 3), dtype=np.uint8), aspect=aspect
    )


# ------------------------------------------------------------------------------------------ fakes
class FakeTagger:
    name = "fake-tagger"

    def __init__(self, delay: float = 0.0):
        self.calls: list[int] = []
        self.delay = delay

    def tag(self, segments):
        self.calls.append(len(segments))
        time.sleep(self.delay)
        if any(s.waveform.size and s.waveform[0] == -1 for s in segments):
            raise ValueError("poisoned segment")
        return [
            AudioTags(start_s=s.start_s, end_s=s.end_s, labels=["Bark"], scores=[float(s.waveform[:1].sum())])
            for s in segments
        ]


class FakeGrounder:
    name = "fake-grounder"

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.gate: threading.Event | None = None
        """When set, ``detect_all`` waits for it (a call that outlasts any timeout, by construction)."""

    def ground(self, frame, phrases, box_threshold=None):
        time.sleep(self.delay)
        h, w = frame.height, frame.width
        mask = np.zeros((len(phrases), h, w), bool)
        for i in range(len(phrases)):
            mask[i, : i + 1, : i + 2] = True
        return Segments(
            xyxy=np.tile([0, 0, 2, 1], (len(phrases), 1)),
            mask=mask,
            confidence=np.full(len(phrases), box_threshold or 0.5),
            labels=list(phrases),
            data={"class": list(phrases), "rank": np.arange(len(phrases), dtype=np.int64)},
        )

    def detect_all(self, frame):
        if self.gate is not None:
            self.gate.wait(60)
        time.sleep(self.delay)
        return self.ground(frame, ["dog"])


class FakeScorer:
    name = "fake-scorer"

    def __init__(self):
        self.calls: list[int] = []

    def score(self, audio, texts):
        self.calls.append(len(audio))
        return np.asarray([[s.start_s + j for j in range(len(texts))] for s in audio], np.float32).reshape(
            len(audio), len(texts)
        )


class FakeMatcher:
    name = "fake-matcher"

    def sound_sources(self, labels, vocabulary):
        return [[(vocabulary[0], 0.9)] if vocabulary else [] for _ in labels]

    def match(self, phrases, vocabulary):
        return [[(p, 1.0)] if p in vocabulary else [] for p in phrases]


def fake_toolset(delay: float = 0.0):
    return SimpleNamespace(
        tagger=FakeTagger(delay),
        grounder=FakeGrounder(delay),
        scorer=FakeScorer(),
        matcher=FakeMatcher(),
        audio_captioner=None,
        image_captioner=None,
        crop_checker=None,
        vocabulary=["dog", "cat", "car"],
        closed_vocabulary=True,
    )


def fake_settings(**serve):
    return load_settings(overrides=[f"serve.{k}={v}" for k, v in serve.items()])


async def _with_app(app, fn):
    """Run ``fn(client)`` against the ASGI app with its lifespan (batchers) running."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await fn(client)


def _auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _post(client, key: str, *args, token: str = TOKEN):
    method = wire.METHODS[key]
    body = wire.pack(*method.encode_args(*args))
    return client.post(method.path, content=body, headers={**_auth(token), "Content-Type": wire.CONTENT_TYPE})


def _fake_app(delay: float = 0.0, ready: bool = True, **serve):
    settings = fake_settings(**serve)
    ts = fake_toolset(delay)
    disp = LocalDispatcher(ts, settings.tool_config())
    disp.ready = ready
    return create_app(disp, settings.serve, TOKEN), ts, disp


# ------------------------------------------------------------------------------------------ wire
def test_wire_round_trips_every_type():
    f = frame(3, aspect=16 / 9)
    a = [seg(0.0, 1.0, 0.25), seg(1.0, 0.5, -0.5)]
    m = wire.METHODS["grounder.ground"]
    meta, arrays = wire.unpack(wire.pack(*m.encode_args(f, ["a dog", "cat"], 0.2)))
    f2, phrases, thr = m.decode_args(meta, arrays)
    assert f2.index == 3 and f2.time_s == f.time_s and f2.aspect == pytest.approx(16 / 9) and thr == 0.2
    assert np.array_equal(f2.image, f.image) and phrases == ["a dog", "cat"]

    s = FakeGrounder().ground(f, ["dog", "cat", "car"], 0.4)
    s2 = m.decode_result(*wire.unpack(wire.pack(*m.encode_result(s))))
    assert (
        np.array_equal(s2.mask, s.mask)
        and np.array_equal(s2.xyxy, s.xyxy)
        and np.array_equal(s2.confidence, s.confidence)
    )
    assert (
        s2.labels == s.labels and s2.data["class"] == s.data["class"] and list(s2.data["rank"]) == [0, 1, 2]
    )
    empty = Segments.empty(5, 7)
    e2 = m.decode_result(*wire.unpack(wire.pack(*m.encode_result(empty))))
    assert e2.shape == (5, 7) and len(e2) == 0

    t = wire.METHODS["tagger.tag"]
    (a2,) = t.decode_args(*wire.unpack(wire.pack(*t.encode_args(a))))
    assert [(x.start_s, x.end_s) for x in a2] == [(0.0, 1.0), (1.0, 1.5)]
    assert all(
        np.array_equal(x.waveform, y.waveform) and x.waveform.dtype == np.float32
        for x, y in zip(a, a2, strict=True)
    )
    tags = [AudioTags(start_s=0, end_s=1, labels=["Dog", "Bark"], scores=[0.5, 0.25])]
    assert t.decode_result(*wire.unpack(wire.pack(*t.encode_result(tags)))) == tags

    sc = wire.METHODS["scorer.score"]
    mat = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    assert np.array_equal(sc.decode_result(*wire.unpack(wire.pack(*sc.encode_result(mat)))), mat)
    mt = wire.METHODS["matcher.match"]
    rows = [[("dog", 0.75), ("cat", 0.5)], []]
    assert mt.decode_result(*wire.unpack(wire.pack(*mt.encode_result(rows)))) == rows
    cap = wire.METHODS["image_captioner.caption"]
    caps = [Captions(texts=["a dog"], noun_phrases=["dog"])]
    assert cap.decode_result(*wire.unpack(wire.pack(*cap.encode_result(caps)))) == caps
    ck = wire.METHODS["crop_checker.check"]
    masks = np.zeros((2, 24, 32), bool)
    masks[1, 3:9, 4:7] = True
    f3, masks3, texts = ck.decode_args(*wire.unpack(wire.pack(*ck.encode_args(f, masks, ["x"]))))
    assert np.array_equal(masks3, masks) and texts == ["x"]
    ac = wire.METHODS["audio_captioner.caption"]
    assert ac.decode_args(*wire.unpack(wire.pack(*ac.encode_args(a, None))))[1] is None


def test_wire_refuses_malformed_payloads():
    g = wire.METHODS["grounder.ground"]
    with pytest.raises(wire.WireError, match="npz"):
        wire.unpack(b"not a zip")
    # object arrays would need pickle: refused
    buf = io.BytesIO()
    np.savez(buf, __meta__=np.frombuffer(b'{"v": 1}', np.uint8), x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(wire.WireError):
        wire.unpack(buf.getvalue())
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros(3))
    with pytest.raises(wire.WireError, match="__meta__"):
        wire.unpack(buf.getvalue())
    with pytest.raises(wire.WireError, match="version"):
        wire.unpack(wire.pack({"v": 99}))
    meta, arrays = g.encode_args(frame(), ["dog"])
    bad = dict(arrays, frame0=arrays["frame0"].astype(np.float32))
    with pytest.raises(wire.WireError, match="uint8"):
        g.decode_args(*wire.unpack(wire.pack(meta, bad)))
    with pytest.raises(wire.WireError, match="phrases"):
        g.decode_args(*wire.unpack(wire.pack(dict(meta, phrases="dog"), arrays)))
    with pytest.raises(wire.WireError, match="box_threshold"):
        g.decode_args(*wire.unpack(wire.pack(dict(meta, box_threshold="high"), arrays)))
    with pytest.raises(wire.WireError, match="missing array"):
        g.decode_args(*wire.unpack(wire.pack(meta, {})))
    # a compressed archive that would decode past the cap
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.npy", b"\0" * (8 * 2**20))
    with pytest.raises(wire.TooLarge):
        wire.unpack(buf.getvalue(), max_bytes=2**20)


# ------------------------------------------------------------------------------------------ batching
def test_run_batch_concatenates_list_methods_and_isolates_failures():
    ts = fake_toolset()
    items = [([seg(i)],) for i in range(5)]
    out = run_batch(ts.tagger, wire.METHODS["tagger.tag"], items)
    assert ts.tagger.calls == [5] and [o[0].start_s for o in out] == [0, 1, 2, 3, 4]
    # score: grouped by texts, one call per group, rows split back
    items = [([seg(0), seg(1)], ["a"]), ([seg(2)], ["b", "c"]), ([seg(3)], ["a"])]
    out = run_batch(ts.scorer, wire.METHODS["scorer.score"], items)
    assert sorted(ts.scorer.calls) == [1, 3] and out[0].shape == (2, 1) and out[1].shape == (1, 2)
    assert out[2][0, 0] == 3.0 and out[1][0, 1] == 3.0
    # a failing concatenated call is retried item by item
    ts.tagger.calls.clear()
    out = run_batch(ts.tagger, wire.METHODS["tagger.tag"], [([seg(0)],), ([seg(1, value=-1)],), ([seg(2)],)])
    assert isinstance(out[1], ValueError) and out[0][0].start_s == 0 and out[2][0].start_s == 2


def test_run_batch_lets_a_tool_prefetch_its_batch():
    """A tool with ``prefetch`` (Grounded-SAM) sees the whole batch first; a failing prefetch only
    means the calls run unbatched."""

    class Grounder:
        def __init__(self, fail=False):
            self.prefetched, self.fail = [], fail

        def prefetch(self, method, calls):
            if self.fail:
                raise RuntimeError("out of memory")
            self.prefetched.append((method, len(calls)))

        def ground(self, frame, phrases, box_threshold=None):
            return f"{frame}:{','.join(phrases)}"

    g = Grounder()
    items = [("f1", ["dog"], None), ("f2", ["car"], 0.2)]
    assert run_batch(g, wire.METHODS["grounder.ground"], items) == ["f1:dog", "f2:car"]
    assert g.prefetched == [("ground", 2)]
    run_batch(g, wire.METHODS["grounder.ground"], items[:1])
    assert g.prefetched == [("ground", 2)]  # a batch of one has nothing to share
    assert run_batch(Grounder(fail=True), wire.METHODS["grounder.ground"], items) == ["f1:dog", "f2:car"]


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer():
    """Twenty calls at once, batches of up to four, a window far longer than the test: each batch runs
    when it is full (its size, not a clock, triggers it), so the tool sees five calls of four."""
    app, ts, _ = _fake_app(max_batch_size=4, batch_wait_s=60)

    async def go(client):
        resps = await asyncio.gather(*[_post(client, "tagger.tag", [seg(i)]) for i in range(20)])
        metrics = (await client.get("/metrics", headers=_auth())).text
        return resps, metrics

    resps, metrics = asyncio.run(_with_app(app, go))
    assert all(r.status_code == 200 and r.headers["x-batch-size"] == "4" for r in resps)
    for i, r in enumerate(resps):
        (tags,) = [wire.METHODS["tagger.tag"].decode_result(*wire.unpack(r.content))]
        assert tags[0].start_s == i
    assert ts.tagger.calls == [4] * 5
    assert batches_over_one(metrics, "tagger.tag") == 5
    assert (
        metric_samples(metrics, "avs_serve_requests_total")[(("code", "200"), ("method", "tagger.tag"))] == 20
    )


def test_batch_size_one_serves_one_call_at_a_time():
    app, ts, _ = _fake_app(delay=0.01, max_batch_size=1, batch_wait_s=0.0)

    async def go(client):
        return await asyncio.gather(*[_post(client, "tagger.tag", [seg(i)]) for i in range(6)])

    resps = asyncio.run(_with_app(app, go))
    assert all(r.status_code == 200 and r.headers["x-batch-size"] == "1" for r in resps)
    assert ts.tagger.calls == [1] * 6


# ------------------------------------------------------------------------------------------ HTTP errors
def test_auth_caps_and_errors():
    app, _, _ = _fake_app(max_request_mb=0.5, max_media_seconds=5)

    async def go(client):
        out = {}
        out["health"] = await client.get("/healthz")
        out["ready_noauth"] = await client.get("/readyz")
        out["metrics_noauth"] = await client.get("/metrics")
        out["ready"] = await client.get("/readyz", headers=_auth())
        out["info"] = await client.get("/v1/info", headers=_auth())
        out["wrong"] = await _post(client, "grounder.detect_all", frame(), token="nope")
        out["missing"] = await client.post("/v1/grounder/detect_all", content=b"x")
        out["basic"] = await client.post(
            "/v1/grounder/detect_all", content=b"x", headers={"Authorization": f"Basic {TOKEN}"}
        )
        out["ok"] = await _post(client, "grounder.ground", frame(1), ["dog", "cat"], 0.25)
        out["big"] = await _post(client, "grounder.detect_all", frame(0, 600, 600))
        out["long"] = await _post(client, "tagger.tag", [seg(0, 3.0), seg(3, 3.0)])
        out["malformed"] = await client.post("/v1/grounder/detect_all", content=b"garbage", headers=_auth())
        m = wire.METHODS["grounder.ground"]
        meta, arrays = m.encode_args(frame(), ["dog"])
        out["badfield"] = await client.post(
            m.path, content=wire.pack(dict(meta, phrases=[1, 2]), arrays), headers=_auth()
        )
        out["unknown"] = await _post(client, "image_captioner.caption", [frame()])
        out["nosuch"] = await client.post("/v1/grounder/explode", content=b"x", headers=_auth())
        return out

    r = asyncio.run(_with_app(app, go))
    assert r["health"].status_code == 200
    assert r["ready_noauth"].status_code == 401 and r["metrics_noauth"].status_code == 401
    assert r["ready"].status_code == 200 and r["info"].json()["tools"]["grounder"] == "fake-grounder"
    assert r["info"].json()["vocabulary"] == ["dog", "cat", "car"]
    for key in ("wrong", "missing", "basic"):
        assert r[key].status_code == 401 and "token" in r[key].json()["detail"]
        assert r[key].headers["www-authenticate"] == "Bearer"
    assert r["ok"].status_code == 200
    got = wire.METHODS["grounder.ground"].decode_result(*wire.unpack(r["ok"].content))
    assert got.labels == ["dog", "cat"] and got.confidence[0] == pytest.approx(0.25)
    assert r["big"].status_code == 413 and "max_request_mb" in r["big"].json()["detail"]
    assert r["long"].status_code == 413 and "6.0 s of audio" in r["long"].json()["detail"]
    assert r["malformed"].status_code == 422 and "npz" in r["malformed"].json()["detail"]
    assert r["badfield"].status_code == 422 and "phrases" in r["badfield"].json()["detail"]
    assert r["unknown"].status_code == 404 and r["nosuch"].status_code == 404


def test_the_media_cap_counts_seconds_of_video_not_frames():
    """serve.max_media_seconds caps seconds, whatever the frame rate: 10 frames at 5 fps (2 s) pass a
    5 s cap, 6 frames at 1 fps (6 s) do not."""
    from dataclasses import replace

    from avs_agent.tools.types import Captions

    class FakeImageCaptioner:
        name = "fake-captioner"

        def caption(self, frames):
            return [Captions(texts=["a frame"]) for _ in frames]

    settings = fake_settings(max_media_seconds=5)
    ts = fake_toolset()
    ts.image_captioner = FakeImageCaptioner()
    disp = LocalDispatcher(ts, settings.tool_config())
    disp.ready = True
    app = create_app(disp, settings.serve, TOKEN)
    fast = [replace(frame(i), time_s=0.1 + i / 5) for i in range(10)]
    slow = [frame(i) for i in range(6)]

    async def go(client):
        return (
            await _post(client, "image_captioner.caption", fast),
            await _post(client, "image_captioner.caption", slow),
        )

    ok, long = asyncio.run(_with_app(app, go))
    assert ok.status_code == 200
    assert long.status_code == 413 and "6 frames spanning 6.0 s of video" in long.json()["detail"]


def test_timeouts_tool_errors_and_not_ready():
    app, ts, disp = _fake_app(request_timeout_s=0.1)
    ts.grounder.gate = threading.Event()  # the call returns only once the test has its answer

    async def slow(client):
        return await _post(client, "grounder.detect_all", frame())

    try:
        r = asyncio.run(_with_app(app, slow))
    finally:
        ts.grounder.gate.set()
    assert r.status_code == 504 and "request_timeout_s" in r.json()["detail"]

    app, _, _ = _fake_app()

    async def poisoned(client):
        return await asyncio.gather(
            _post(client, "tagger.tag", [seg(0, value=-1)]), _post(client, "tagger.tag", [seg(1)])
        )

    bad, good = asyncio.run(_with_app(app, poisoned))
    assert bad.status_code == 500 and "poisoned" in bad.json()["detail"] and good.status_code == 200

    class Failing(LocalDispatcher):
        def load(self):
            raise ModelNotFoundError("YAMNet weights not found at /x")

    settings = fake_settings()
    disp = Failing(fake_toolset(), settings.tool_config())
    app = create_app(disp, settings.serve, None)

    async def not_ready(client):
        for _ in range(100):
            if disp.error:
                break
            await asyncio.sleep(0.01)
        return await client.get("/readyz"), await _post(client, "tagger.tag", [seg()])

    ready, call = asyncio.run(_with_app(app, not_ready))
    assert ready.status_code == 503 and "weights not found" in ready.json()["detail"]
    assert call.status_code == 503


def test_bind_rules_and_tool_selection():
    assert (
        is_loopback("127.0.0.1")
        and is_loopback("::1")
        and is_loopback("localhost")
        and is_loopback("127.0.0.5")
    )
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.org")
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "tok")
    with pytest.raises(ConfigError, match="AVS_AGENT_TOKEN"):
        check_bind("0.0.0.0", None)
    assert parse_tools(None, ["tagger", "grounder"]) == ["tagger", "grounder"]
    assert parse_tools("grounder, tagger", ["tagger", "grounder"]) == ["grounder", "tagger"]
    with pytest.raises(ConfigError, match="unknown tool"):
        parse_tools("sam", ["tagger"])
    with pytest.raises(ConfigError, match="no image_captioner"):
        parse_tools("image_captioner", ["tagger"])


def test_serve_refuses_a_public_host_without_a_token():
    proc = subprocess.run(
        [sys.executable, "-m", "avs_agent.apps.cli", "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "AVS_AGENT_TOKEN" in lines[0] and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------ remote client
def test_remote_backend_over_a_fake_server(monkeypatch):
    settings = fake_settings(max_batch_size=4)
    disp = LocalDispatcher(fake_toolset(), settings.tool_config())
    disp.ready = True
    with ServerThread(create_app(disp, settings.serve, TOKEN)) as srv:
        monkeypatch.setenv("AVS_AGENT_TOKEN", TOKEN)
        ts = build_remote_toolset(load_settings(overrides=[f"tools.backend={srv.url}"]).tool_config())
        assert (
            ts.grounder.name == "fake-grounder"
            and ts.closed_vocabulary
            and ts.vocabulary == ["dog", "cat", "car"]
        )
        assert ts.audio_captioner is None and ts.image_captioner is None
        assert [t.start_s for t in ts.tagger.tag([seg(0), seg(1)])] == [0, 1] and ts.tagger.tag([]) == []
        assert ts.scorer.score([seg(2)], ["a", "b"]).tolist() == [[2.0, 3.0]]
        assert ts.scorer.score([], ["a"]).shape == (0, 1)
        assert ts.matcher.match(["dog", "zebra"], ts.vocabulary) == [[("dog", 1.0)], []]
        assert ts.matcher.sound_sources(["Bark"], ts.vocabulary) == [[("dog", 0.9)]]
        s = ts.grounder.ground(frame(), ["dog"], 0.3)
        assert (
            s.labels == ["dog"]
            and s.mask.shape == (1, 24, 32)
            and ts.grounder.detect_all(frame()).labels == ["dog"]
        )

        monkeypatch.setenv("AVS_AGENT_TOKEN", "wrong")
        with pytest.raises(ToolServerError, match="401"):
            build_remote_toolset(load_settings(overrides=[f"tools.backend={srv.url}"]).tool_config())
        monkeypatch.delenv("AVS_AGENT_TOKEN")
        with pytest.raises(ToolServerError, match="AVS_AGENT_TOKEN"):
            build_remote_toolset(load_settings(overrides=[f"tools.backend={srv.url}"]).tool_config())


def test_remote_backend_reports_a_server_that_is_down(monkeypatch):
    """A server that is down: the configured retries, with their doubling back-off, then one line."""
    from avs_agent.tools.server import remote

    waits: list[float] = []
    monkeypatch.setattr(remote, "time", SimpleNamespace(sleep=waits.append))  # the client's waits, kept
    port = free_port()
    with pytest.raises(ToolServerError, match="not reachable") as exc:
        build_remote_toolset(
            load_settings(
                overrides=[
                    f"tools.backend=http://127.0.0.1:{port}",
                    "serve.client_retries=3",
                    "serve.client_backoff_s=0.5",
                ]
            ).tool_config()
        )
    assert "after 4 tries" in str(exc.value) and waits == [0.5, 1.0, 2.0]
    assert (
        "avs-agent serve" in str(exc.value)
        and "\n" not in str(exc.value)
        and isinstance(exc.value, UserError)
    )
    with pytest.raises(ConfigError, match="tools.backend"):
        RemoteClient("ftp://x")


# ------------------------------------------------------------------------------------------ real lite server
@pytest.fixture(scope="module")
def lite_toolset():
    """The real lite tools, loaded once for the servers below."""
    from avs_agent.tools.wiring import get_toolset

    settings = load_settings(overrides=[f"models_dir={SHARED / 'models'}"])
    disp = LocalDispatcher(get_toolset(settings.tool_config()), settings.tool_config())
    disp.load()
    return disp.toolset


def _lite_server(toolset, **serve):
    settings = load_settings(
        overrides=[f"models_dir={SHARED / 'models'}", *(f"serve.{k}={v}" for k, v in serve.items())]
    )
    disp = LocalDispatcher(toolset, settings.tool_config())
    disp.ready = True  # loaded by the fixture
    return ServerThread(create_app(disp, settings.serve, TOKEN))


@pytest.fixture(scope="module")
def lite_server(lite_toolset):
    """The real lite tools behind the server (token required), batching window 20 ms, batches up to 8."""
    with _lite_server(lite_toolset, max_batch_size=8, batch_wait_s=0.02) as srv:
        yield srv


def _ask(frames, wav, out, *extra):
    res = runner.invoke(
        cli_app, ["ask", str(frames), "--audio", str(wav), "--out", str(out), "--json", *extra]
    )
    return res


def test_ask_through_the_server_gives_the_same_masks(lite_server, dev_set, tmp_path, monkeypatch):
    frames, wav, _ = dev_clip_paths("pets_great_pyrenees_178_bark_01")
    local = _ask(frames, wav, tmp_path / "local")
    assert local.exit_code == 0, local.output
    monkeypatch.setenv("AVS_AGENT_TOKEN", TOKEN)
    remote = _ask(frames, wav, tmp_path / "remote", "--set", f"tools.backend={lite_server.url}")
    assert remote.exit_code == 0, remote.output
    a, b = json.loads(local.stdout), json.loads(remote.stdout)
    assert a["labels"] == b["labels"] == ["dog"] and a["answer"] == b["answer"]
    for fa, fb in zip(a["frames"], b["frames"], strict=True):
        ma = np.asarray(Image.open(tmp_path / "local" / fa["mask_file"]))
        mb = np.asarray(Image.open(tmp_path / "remote" / fb["mask_file"]))
        assert ma.any() and np.array_equal(ma, mb)
        assert fa["boxes"] == fb["boxes"] and fa["scores"] == fb["scores"]
    assert b["stats"]["tools"]["grounder"] == "lite-yolox-deeplab"

    monkeypatch.delenv("AVS_AGENT_TOKEN")  # (a new URL spelling: get_toolset caches per settings)
    denied = _ask(frames, wav, tmp_path / "denied", "--set", f"tools.backend={lite_server.url}/")
    assert isinstance(denied.exception, ToolServerError) and "401" in str(denied.exception)


def test_twenty_concurrent_requests_succeed_and_are_batched(lite_toolset, dev_set):
    """Twenty requests at once to the real lite tools, ten per method; batches of five and a window
    far longer than the test, so that each batch runs when it is full: two batches of five each."""
    frames_dir, wav, _ = dev_clip_paths("davis_car_shadow_horn_01")
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(frames_dir.glob("*.png"))[:5]]
    # 20 distinct frames (flipped/rolled copies) so the grounder's per-frame cache does not answer
    jobs = [
        Frame(index=i, time_s=float(i), image=np.ascontiguousarray(np.roll(images[i % 5], 7 * i, axis=1)))
        for i in range(20)
    ]
    audio = [
        AudioSegment(0.0, 1.0, np.random.default_rng(i).uniform(-0.3, 0.3, 16000).astype(np.float32))
        for i in range(20)
    ]
    with _lite_server(lite_toolset, max_batch_size=5, batch_wait_s=60) as srv:
        client = RemoteClient(srv.url, token=TOKEN)

        def work(i):
            if i % 2:
                return client.call("grounder.detect_all", jobs[i])
            return client.call("tagger.tag", [audio[i]])

        with ThreadPoolExecutor(20) as pool:
            results = list(pool.map(work, range(20)))
        text = httpx.get(f"{srv.url}/metrics", headers=_auth()).text
        client.close()
    assert all(isinstance(r, Segments) for r in results[1::2]) and all(len(r) == 1 for r in results[::2])
    codes = metric_samples(text, "avs_serve_requests_total")
    assert sum(v for k, v in codes.items() if dict(k)["code"] != "200") == 0
    assert batches_over_one(text, "grounder.detect_all") == batches_over_one(text, "tagger.tag") == 2
    assert batches_over_one(text, "tagger.tag", "avs_serve_request_batch_size") == 10
