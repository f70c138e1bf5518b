"""The tools as Ray Serve deployments, for more than one machine (`avs-agent serve --ray`).

One deployment per tool (``avs-tagger``, ``avs-grounder``...): each replica builds the profile's
toolset, keeps its one tool and loads that tool's models once in ``__init__``; a single batched entry
point (``@serve.batch`` with ``serve.max_batch_size`` / ``serve.batch_wait_s``) runs a batch through the
same ``tools.server.app.run_batch`` as the FastAPI server. Replicas, GPUs and CPUs per replica come from
``serve.ray_replicas``, ``serve.ray_gpus_per_replica``, ``serve.ray_cpus_per_replica`` and per tool from
``serve.ray_tool_options`` ({tool: {replicas, gpus, cpus}}).

An ingress deployment serves the very same FastAPI app (``tools.server.app.create_app``: auth, size and
duration caps, timeouts, /healthz, /readyz, /metrics) over a dispatcher that forwards each call to the
tool's deployment handle, so the remote backend (``tools.server.remote``) talks to it unchanged.

``ray`` is an optional extra (``pip install 'avs-agent[ray]'``) imported only here, lazily.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from avs_agent.tools.errors import ConfigError
from avs_agent.tools.server import wire
from avs_agent.tools.settings import ToolConfig


def _require_ray() -> Any:
    try:
        import ray
        from ray import serve  # noqa: F401
    except ImportError:
        raise ConfigError("`serve --ray` needs Ray Serve: pip install 'avs-agent[ray]'") from None
    return ray


class RayDispatcher:
    """The ``tools.server.app.Dispatcher`` of the ingress: forwards calls to the tools' deployment handles.

    Tool names and the vocabulary are read from a toolset built (not loaded) by the driver; the
    handles are set in the ingress replica. Serve routes HTTP to the app only once every deployment's
    replicas have loaded their models, so the dispatcher is ready as soon as it has its handles."""

    def __init__(
        self,
        settings: ToolConfig,
        tools: list[str],
        names: dict[str, str],
        vocabulary: list[str],
        closed: bool,
    ):
        self.settings = settings
        self.tools = tools
        self.names = names
        self.vocabulary = vocabulary
        self.closed = closed
        self.handles: dict[str, Any] = {}
        self.error: str | None = None

    @property
    def ready(self) -> bool:
        return bool(self.handles)

    def info(self) -> dict[str, Any]:
        from avs_agent.tools.server.app import server_info

        names = {t: self.names[t] for t in self.tools}
        return server_info(self.settings, "ray", names, self.vocabulary, self.closed)

    async def start(self, on_batch: Any) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def submit(self, method: wire.Method, args: tuple) -> tuple[Any, int]:
        result, size = await self.handles[method.tool].call.remote(method.key, args)
        if isinstance(result, BaseException):
            raise result
        return result, size


def tool_options(settings: ToolConfig, tool: str) -> dict[str, Any]:
    """Deployment options of one tool: replicas, GPUs and CPUs per replica, and enough concurrent
    requests per replica to fill a batch."""
    s = settings.serve
    own = s.ray_tool_options.get(tool, {})
    unknown = set(own) - {"replicas", "gpus", "cpus"}
    if unknown:
        raise ConfigError(
            f"serve.ray_tool_options.{tool}: unknown option(s) {', '.join(sorted(unknown))} (use replicas, gpus, cpus)"
        )
    return {
        "name": f"avs-{tool}",
        "num_replicas": int(own.get("replicas", s.ray_replicas)),
        "ray_actor_options": {
            "num_gpus": float(own.get("gpus", s.ray_gpus_per_replica)),
            "num_cpus": float(own.get("cpus", s.ray_cpus_per_replica)),
        },
        "max_ongoing_requests": max(16, 2 * s.max_batch_size),
    }


def build_ray_app(settings: ToolConfig, tools: str | None = None, token: str | None = None) -> Any:
    """The Ray Serve application (ingress + one deployment per tool); run it with ``serve.run``."""
    _require_ray()
    from ray import serve

    from avs_agent.tools.server.app import create_app, parse_tools

    if settings.tools.backend != "local":
        raise ConfigError(
            "a tool server runs its models locally: tools.backend must be 'local' on the server"
        )
    s = settings.serve
    settings_data = settings.model_dump(mode="json")

    class ToolReplica:
        """One tool's models, loaded once per replica; calls arrive one by one and run in batches."""

        def __init__(self, settings_data: dict[str, Any], tool: str):
            from avs_agent.tools.wiring import build_toolset

            toolset = build_toolset(ToolConfig(**settings_data))
            self.tool_name = tool
            self.tool = getattr(toolset, tool)
            self.vocabulary = list(toolset.vocabulary)
            self.tool.warm_up()

        def describe(self) -> dict[str, Any]:
            return {"name": self.tool.name, "vocabulary": self.vocabulary}

        @serve.batch(max_batch_size=max(1, s.max_batch_size), batch_wait_timeout_s=max(0.0, s.batch_wait_s))
        async def call(self, keys: list[str], args: list[tuple]) -> list[tuple[Any, int]]:
            from avs_agent.tools.server.app import run_batch

            out: list[Any] = [None] * len(keys)
            groups: dict[str, list[int]] = {}
            for i, key in enumerate(keys):
                groups.setdefault(key, []).append(i)
            for key, idx in groups.items():
                # off the replica's event loop, one batch at a time (max_concurrent_batches=1)
                results = await asyncio.to_thread(
                    run_batch, self.tool, wire.METHODS[key], [args[i] for i in idx]
                )
                for i, res in zip(idx, results, strict=True):
                    out[i] = res
            return [(res, len(keys)) for res in out]

    from avs_agent.tools.wiring import build_toolset

    toolset = build_toolset(settings)  # models load lazily: this only reads names and the vocabulary
    served = parse_tools(tools, [t for t in wire.TOOLS if getattr(toolset, t, None) is not None])
    names = {t: getattr(toolset, t).name for t in served}
    vocabulary = list(toolset.vocabulary)
    closed = toolset.closed_vocabulary

    @serve.deployment(
        name="avs-ingress", num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000
    )
    @serve.ingress()
    class Ingress:
        """HTTP: the same FastAPI app as the single-process server, over the tool deployments' handles
        (the app is built in the replica, after the handles arrive)."""

        def __init__(self, **handles: Any):
            self.dispatcher = RayDispatcher(settings, served, names, vocabulary, closed)
            self.dispatcher.handles = handles

        def __serve_build_asgi_app__(self) -> Any:
            return create_app(self.dispatcher, s, token)

    handles = {
        tool: serve.deployment(ToolReplica, **tool_options(settings, tool)).bind(settings_data, tool)
        for tool in served
    }
    return Ingress.bind(**handles)


def start_ray(settings: ToolConfig, host: str, port: int, num_cpus: float | None = None) -> Any:
    """Connect to the Ray cluster in RAY_ADDRESS (or start a local one) and start Serve's HTTP proxy on
    host:port."""
    ray = _require_ray()
    from ray import serve

    if not ray.is_initialized():
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "ignore_reinit_error": True,
            "log_to_driver": False,
        }
        if os.environ.get("RAY_ADDRESS"):
            kwargs["address"] = os.environ["RAY_ADDRESS"]
        elif num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        ray.init(**kwargs)
    serve.start(http_options={"host": host, "port": port})
    return serve


def run_ray(
    settings: ToolConfig, tools: str | None, host: str, port: int, token: str | None, blocking: bool = True
) -> Any:
    """`avs-agent serve --ray`: deploy and (when ``blocking``) serve until interrupted."""
    application = build_ray_app(settings, tools, token)
    serve = start_ray(settings, host, port)
    return serve.run(application, name="avs-agent", route_prefix="/", blocking=blocking)
