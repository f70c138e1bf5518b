"""The tool server's settings (``serve`` in the config): where it listens, how it batches, and how the
remote client (``tools.backend: http://...``) retries."""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, Field

TOKEN_ENV = "AVS_AGENT_TOKEN"
"""Environment variable of the bearer token a tool server requires and its clients send."""


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 (bare or in brackets) and 'localhost'; False for 0.0.0.0, other
    addresses and host names. The tool server and the web page refuse other hosts without a token or
    a password."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


class ServeSettings(BaseModel):
    """The tool server (``avs-agent serve``) and the remote backend that calls it."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    """Address the server binds (``--host``); other than loopback only with ``AVS_AGENT_TOKEN`` set."""
    port: int = 8000
    """Port the server listens on (``--port``)."""
    max_batch_size: int = 8
    """Concurrent requests for one tool method run as one batch of at most this many."""
    batch_wait_s: float = 0.01
    """Seconds a batch waits for more requests after its first."""
    max_request_mb: float = 64.0
    """Largest request body, MB (413 above)."""
    max_media_seconds: float = 600.0
    """Most media one request may carry, seconds (413 above)."""
    request_timeout_s: float = 120.0
    """Seconds one request may take on the server (504 after); the client waits 10 s longer."""
    client_retries: int = Field(
        3, description="remote backend: retries on connection errors and 503 (models loading)"
    )
    client_backoff_s: float = Field(0.5, description="remote backend: first retry delay, doubled per retry")
    ray_replicas: int = Field(1, description="Ray Serve: replicas per tool deployment")
    ray_gpus_per_replica: float = Field(
        0.0, description="Ray Serve: GPUs per replica (fractions share a GPU)"
    )
    ray_cpus_per_replica: float = Field(1.0, description="Ray Serve: CPUs reserved per replica")
    ray_tool_options: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Ray Serve: per-tool overrides, e.g. {grounder: {replicas: 2, gpus: 1, cpus: 2}}",
    )
