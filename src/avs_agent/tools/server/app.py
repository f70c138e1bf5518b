"""The tool server: every tool of a profile behind HTTP (FastAPI), models loaded once, requests batched.

Routes (all but ``/healthz`` need ``Authorization: Bearer $AVS_AGENT_TOKEN`` when a token is set):

- ``POST /v1/{tool}/{method}``: one tool call; body and answer are ``tools.server.wire`` messages
  (``application/x-avs-npz``). 401 wrong/missing token, 404 unknown tool, 413 over the size or media
  duration cap, 422 malformed payload, 503 models not loaded, 504 over ``serve.request_timeout_s``.
- ``GET /v1/info``: profile, tool names, vocabulary and limits (what the remote backend builds on).
- ``GET /healthz``: the process answers. ``GET /readyz``: 200 once the models are loaded, else 503.
- ``GET /metrics``: Prometheus text: requests by code, latency, batch sizes, requests in flight.

Batching: each tool method has a queue. A worker takes the first waiting call, waits up to
``serve.batch_wait_s`` for more (up to ``serve.max_batch_size``), and runs them as one call of the tool:
list-first methods (``tag``, ``score``, ``match``, captions) are concatenated into one list and split
back; per-frame methods (``ground``, ``detect_all``, ``check``) run as a loop inside the one worker. Each
tool has one worker thread (a TFLite interpreter is not thread-safe; a GPU model gains nothing from two
threads), different tools run in parallel. Calls that pile up while a batch runs form the next batch.

The HTTP layer (``create_app``) talks to a dispatcher: ``LocalDispatcher`` here (the models in this
process), or the Ray Serve one in ``tools.server.ray_serve`` (models in Ray deployments).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from avs_agent.tools.errors import ConfigError, UserError
from avs_agent.tools.server import wire
from avs_agent.tools.server.settings import TOKEN_ENV, ServeSettings, is_loopback
from avs_agent.tools.settings import ToolConfig
from avs_agent.tools.types import Frame

log = logging.getLogger("avs_agent.serve")

CONCAT_METHODS = {
    "tagger.tag",
    "scorer.score",
    "matcher.sound_sources",
    "matcher.match",
    "matcher.covers",
    "audio_captioner.caption",
    "image_captioner.caption",
}
"""Methods whose first argument is a list: a batch is concatenated into one call and split back."""


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve on a non-loopback address without a token (a ``UserError``: one line, exit 2)."""
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"refusing to serve on non-loopback host {host} without a token: set {TOKEN_ENV} (clients send it as a bearer token)"
        )


def parse_tools(spec: str | None, available: list[str]) -> list[str]:
    """'--tools grounder,tagger' -> the tools to serve (validated); None -> every available tool."""
    if not spec:
        return list(available)
    wanted = [t.strip() for t in spec.split(",") if t.strip()]
    unknown = [t for t in wanted if t not in wire.TOOLS]
    if unknown:
        raise ConfigError(f"unknown tool(s) {', '.join(unknown)}: choose from {', '.join(wire.TOOLS)}")
    missing = [t for t in wanted if t not in available]
    if missing:
        raise ConfigError(f"the profile has no {', '.join(missing)} (it has {', '.join(available)})")
    return list(dict.fromkeys(wanted))


# ------------------------------------------------------------------------------------------ batches
def run_batch(tool: Any, method: wire.Method, items: list[tuple]) -> list[Any]:
    """Run a batch of calls of one method with as few tool calls as it allows.

    Returns one result per item, or the exception that item raised (a failing concatenated call is
    retried item by item, so one bad call does not fail its neighbours)."""
    fn = getattr(tool, method.name)
    prefetch = getattr(tool, "prefetch", None)
    if prefetch is not None and len(items) > 1:
        # a tool that can batch its heavy forwards across calls (Grounded-SAM's detector and image
        # encoder) does so here; the calls below then run from its caches
        try:
            prefetch(method.name, items)
        except Exception:  # each call below runs (and reports its own error) as if never prefetched
            log.exception("prefetch of %s failed; running the batch call by call", method.key)
    if method.key not in CONCAT_METHODS or len(items) == 1:
        return [_call(fn, args) for args in items]
    out: list[Any] = [None] * len(items)
    groups: dict[str, list[int]] = {}
    for i, args in enumerate(items):
        groups.setdefault(json.dumps(list(args[1:])), []).append(i)
    for idx in groups.values():
        rest = items[idx[0]][1:]
        flat = [x for i in idx for x in items[i][0]]
        try:
            result = fn(flat, *rest)
        except Exception:
            for i in idx:
                out[i] = _call(fn, items[i])
            continue
        start = 0
        for i in idx:
            n = len(items[i][0])
            out[i] = result[start : start + n]
            start += n
    return out


def frames_seconds(args: tuple) -> float:
    """The seconds of video the frames among a call's arguments stand for: from the first frame's
    time to the last's plus one frame interval (the smallest gap between their times); a single
    frame, none. (``serve.max_media_seconds`` caps seconds, whatever the frame rate.)"""
    frames = [x for a in args for x in (a if isinstance(a, list) else [a]) if isinstance(x, Frame)]
    times = sorted({f.time_s for f in frames})
    if len(times) < 2:
        return 0.0
    return times[-1] - times[0] + min(b - a for a, b in zip(times, times[1:], strict=False))


def _call(fn: Callable, args: tuple) -> Any:
    try:
        return fn(*args)
    except Exception as exc:
        return exc


class _Batcher:
    """One method's queue and worker loop (lives on the server's event loop)."""

    def __init__(
        self,
        tool: Any,
        method: wire.Method,
        executor: ThreadPoolExecutor,
        max_batch: int,
        wait_s: float,
        on_batch: Callable[[wire.Method, int, float], None],
    ):
        self.tool, self.method, self.executor = tool, method, executor
        self.max_batch, self.wait_s, self.on_batch = max(1, max_batch), max(0.0, wait_s), on_batch
        self.items: deque[tuple[tuple, asyncio.Future]] = deque()
        self.event = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{method.key}")

    async def submit(self, args: tuple) -> tuple[Any, int]:
        fut = asyncio.get_running_loop().create_future()
        self.items.append((args, fut))
        self.event.set()
        return await fut

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.items:
                self.event.clear()
                await self.event.wait()
            deadline = loop.time() + self.wait_s
            while len(self.items) < self.max_batch and (left := deadline - loop.time()) > 0:
                self.event.clear()
                try:
                    await asyncio.wait_for(self.event.wait(), left)
                except TimeoutError:
                    break
            batch = []
            while self.items and len(batch) < self.max_batch:
                args, fut = self.items.popleft()
                if not fut.done():  # a caller that timed out is dropped, not computed
                    batch.append((args, fut))
            if not batch:
                continue
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(
                    self.executor, run_batch, self.tool, self.method, [a for a, _ in batch]
                )
            except Exception as exc:  # pragma: no cover - run_batch returns exceptions per item
                results = [exc] * len(batch)
            self.on_batch(self.method, len(batch), time.perf_counter() - t0)
            for (_, fut), res in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(res, BaseException):
                    fut.set_exception(res)
                else:
                    fut.set_result((res, len(batch)))


# ------------------------------------------------------------------------------------------ dispatchers
class Dispatcher(Protocol):
    """What the HTTP layer needs from whatever holds the models."""

    tools: list[str]
    ready: bool
    error: str | None

    def info(self) -> dict[str, Any]: ...

    async def start(self, on_batch: Callable[[wire.Method, int, float], None]) -> None: ...

    async def stop(self) -> None: ...

    async def submit(self, method: wire.Method, args: tuple) -> tuple[Any, int]:
        """(result, size of the batch it ran in)."""
        ...


class LocalDispatcher:
    """The tools of a toolset in this process, one worker thread per tool, one batcher per method."""

    def __init__(self, toolset: Any, settings: ToolConfig, tools: list[str] | None = None):
        self.toolset = toolset
        self.settings = settings
        available = [t for t in wire.TOOLS if getattr(toolset, t, None) is not None]
        self.tools = list(tools) if tools is not None else available
        self.ready = False
        self.error: str | None = None
        self._executors = {t: ThreadPoolExecutor(1, thread_name_prefix=f"tool-{t}") for t in self.tools}
        self._batchers: dict[str, _Batcher] = {}
        self._loading: asyncio.Task | None = None

    @classmethod
    def from_settings(cls, settings: ToolConfig, tools: str | None = None) -> LocalDispatcher:
        from avs_agent.tools.wiring import build_toolset

        if settings.tools.backend != "local":
            raise ConfigError(
                "a tool server runs its models locally: tools.backend must be 'local' on the server"
            )
        toolset = build_toolset(settings)
        available = [t for t in wire.TOOLS if getattr(toolset, t, None) is not None]
        return cls(toolset, settings, parse_tools(tools, available))

    def load(self) -> None:
        """Load every served tool's models (blocking; each tool's ``warm_up``). Raises what loading
        raises (e.g. missing weights)."""
        for name in self.tools:
            t0 = time.perf_counter()
            getattr(self.toolset, name).warm_up()
            log.info(
                "loaded %s (%s) in %.1f s", name, getattr(self.toolset, name).name, time.perf_counter() - t0
            )
        self.ready = True

    def info(self) -> dict[str, Any]:
        names = {t: getattr(self.toolset, t).name for t in self.tools}
        return server_info(
            self.settings, "local", names, self.toolset.vocabulary, self.toolset.closed_vocabulary
        )

    async def start(self, on_batch: Callable[[wire.Method, int, float], None]) -> None:
        s = self.settings.serve
        for m in wire.METHODS.values():
            if m.tool in self.tools:
                tool = getattr(self.toolset, m.tool)
                self._batchers[m.key] = _Batcher(
                    tool, m, self._executors[m.tool], s.max_batch_size, s.batch_wait_s, on_batch
                )
        if not self.ready:
            self._loading = asyncio.get_running_loop().create_task(self._load_in_background())

    async def _load_in_background(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.load)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("loading the models failed: %s", self.error)

    async def stop(self) -> None:
        for b in self._batchers.values():
            b.task.cancel()
        self._batchers.clear()

    async def submit(self, method: wire.Method, args: tuple) -> tuple[Any, int]:
        return await self._batchers[method.key].submit(args)


def server_info(
    settings: ToolConfig, backend: str, names: dict[str, str], vocabulary: list[str], closed: bool
) -> dict[str, Any]:
    """``GET /v1/info``: what the remote backend builds its toolset from."""
    return {
        "server": "avs-agent",
        "backend": backend,
        "profile": settings.profile,
        "tools": names,
        "vocabulary": list(vocabulary),
        "closed_vocabulary": closed,
        "methods": [m.key for m in wire.METHODS.values() if m.tool in names],
        "limits": _limits(settings.serve),
        "wire_version": wire.WIRE_VERSION,
    }


def _limits(s: ServeSettings) -> dict[str, Any]:
    return {
        "max_request_mb": s.max_request_mb,
        "max_media_seconds": s.max_media_seconds,
        "request_timeout_s": s.request_timeout_s,
        "max_batch_size": s.max_batch_size,
        "batch_wait_s": s.batch_wait_s,
    }


# ------------------------------------------------------------------------------------------ metrics
class Metrics:
    """Prometheus metrics of one app (own registry, so several apps can live in one process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "avs_serve_requests",
            "Tool requests by method and HTTP status",
            ["method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "avs_serve_request_latency_seconds",
            "Tool request latency (body read to answer)",
            ["method"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        sizes = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
        self.batch_size = Histogram(
            "avs_serve_batch_size",
            "Calls per batch run by a tool worker",
            ["method"],
            registry=self.registry,
            buckets=sizes,
        )
        self.request_batch = Histogram(
            "avs_serve_request_batch_size",
            "Size of the batch each request was served in",
            ["method"],
            registry=self.registry,
            buckets=sizes,
        )
        self.batch_seconds = Histogram(
            "avs_serve_batch_seconds",
            "Model time per batch",
            ["method"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.in_flight = Gauge("avs_serve_in_flight", "Tool requests being served", registry=self.registry)
        self.ready = Gauge("avs_serve_ready", "1 once the models are loaded", registry=self.registry)

    def on_batch(self, method: wire.Method, size: int, seconds: float) -> None:
        self.batch_size.labels(method.key).observe(size)
        self.batch_seconds.labels(method.key).observe(seconds)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


# ------------------------------------------------------------------------------------------ app
def create_app(dispatcher: Dispatcher, serve: ServeSettings, token: str | None) -> FastAPI:
    """The FastAPI app over a dispatcher. ``token``: required bearer token (None: no auth, loopback only)."""
    metrics = Metrics()
    max_bytes = int(serve.max_request_mb * 2**20)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await dispatcher.start(metrics.on_batch)
        try:
            yield
        finally:
            await dispatcher.stop()

    app = FastAPI(
        title="avs-agent tool server", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.dispatcher = dispatcher
    app.state.metrics = metrics

    def error(code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"detail": message}, status_code=code, headers=headers)

    @app.middleware("http")
    async def auth(request: Request, call_next):
        if token and request.url.path != "/healthz":
            header = request.headers.get("authorization", "")
            scheme, _, given = header.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
                return error(
                    401,
                    "missing or wrong bearer token (set AVS_AGENT_TOKEN to the server's token)",
                    {"WWW-Authenticate": "Bearer"},
                )
        return await call_next(request)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        metrics.ready.set(1 if dispatcher.ready else 0)
        if dispatcher.ready:
            return {"ready": True, "tools": dispatcher.tools}
        return error(
            503, f"models not loaded: {dispatcher.error}" if dispatcher.error else "models are loading"
        )

    @app.get("/metrics")
    async def prometheus():
        metrics.ready.set(1 if dispatcher.ready else 0)
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/info")
    async def info():
        return dispatcher.info()

    @app.post("/v1/{tool}/{name}")
    async def call(tool: str, name: str, request: Request):
        method = wire.METHODS.get(f"{tool}.{name}")
        if method is None or tool not in dispatcher.tools:
            return error(404, f"no tool method {tool}.{name} here; served: {', '.join(dispatcher.tools)}")
        t0 = time.perf_counter()
        metrics.in_flight.inc()
        try:
            response = await _serve_call(method, request)
        finally:
            metrics.in_flight.dec()
        metrics.requests.labels(method.key, str(response.status_code)).inc()
        metrics.latency.labels(method.key).observe(time.perf_counter() - t0)
        return response

    async def _serve_call(method: wire.Method, request: Request):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            return error(
                413,
                f"request of {int(length) / 2**20:.1f} MB is over the server's cap of {serve.max_request_mb:g} MB (serve.max_request_mb)",
            )
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:
                return error(
                    413,
                    f"request is over the server's cap of {serve.max_request_mb:g} MB (serve.max_request_mb)",
                )
        try:
            meta, arrays = wire.unpack(bytes(body), max_bytes=max_bytes)
            args = method.decode_args(meta, arrays)
        except wire.TooLarge as exc:
            return error(413, str(exc))
        except (wire.WireError, ValueError, TypeError, KeyError) as exc:
            return error(422, f"malformed {method.key} payload: {exc}")
        audio_s, frames = method.media(args)
        video_s = frames_seconds(args)
        if max(audio_s, video_s) > serve.max_media_seconds:
            what = (
                f"{audio_s:.1f} s of audio"
                if audio_s >= video_s
                else f"{frames} frames spanning {video_s:.1f} s of video"
            )
            return error(
                413,
                f"request carries {what}; this server accepts at most {serve.max_media_seconds:g} s of media per request (serve.max_media_seconds)",
            )
        if not dispatcher.ready:
            detail = f"models not loaded: {dispatcher.error}" if dispatcher.error else "models are loading"
            return error(503, detail, {"Retry-After": "1"})
        try:
            result, batch = await asyncio.wait_for(dispatcher.submit(method, args), serve.request_timeout_s)
        except TimeoutError:
            return error(
                504, f"{method.key} took longer than {serve.request_timeout_s:g} s (serve.request_timeout_s)"
            )
        except UserError as exc:
            return error(422, f"{method.key}: {exc}")
        except Exception as exc:
            log.exception("%s failed", method.key)
            return error(500, f"{method.key} failed on the server: {type(exc).__name__}: {exc}")
        metrics.request_batch.labels(method.key).observe(batch)
        meta, arrays = method.encode_result(result)
        return Response(
            wire.pack(meta, arrays), media_type=wire.CONTENT_TYPE, headers={"X-Batch-Size": str(batch)}
        )

    return app


def build_app(
    settings: ToolConfig, tools: str | None = None, token: str | None = None, load: bool = True
) -> Any:
    """The app for ``avs-agent serve``: a local dispatcher over the profile's tools, loaded now when
    ``load`` (so missing weights fail before the server binds)."""
    dispatcher = LocalDispatcher.from_settings(settings, tools)
    if load:
        dispatcher.load()
    return create_app(dispatcher, settings.serve, token)
