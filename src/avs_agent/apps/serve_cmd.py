"""`avs-agent serve`: the tools of a profile behind HTTP (FastAPI + uvicorn, or Ray Serve with --ray)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from avs_agent.apps.options import ConfigOpt, ProfileOpt, SetOpt, require, require_for, settings_from


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        profile: ProfileOpt = None,
        tools: Annotated[
            str | None,
            typer.Option(
                "--tools", help="serve only these tools, e.g. grounder,tagger (default: all of the profile)"
            ),
        ] = None,
        host: Annotated[
            str | None, typer.Option("--host", help="address to bind (default serve.host, 127.0.0.1)")
        ] = None,
        port: Annotated[int | None, typer.Option("--port", help="port (default serve.port, 8000)")] = None,
        ray: Annotated[
            bool,
            typer.Option(
                "--ray",
                help="deploy the tools with Ray Serve (replicas, GPUs, @serve.batch); needs the 'ray' extra",
            ),
        ] = False,
        log_level: Annotated[str, typer.Option("--log-level", help="uvicorn / server log level")] = "info",
        config: ConfigOpt = None,
        set_: SetOpt = None,
    ) -> None:
        """Serve the profile's tools over HTTP for `--set tools.backend=http://HOST:PORT` clients.

        Set AVS_AGENT_TOKEN to require it as a bearer token (required on a non-loopback host)."""
        from avs_agent.apps.cli import err

        require(["fastapi", "uvicorn"], "`avs-agent serve`")
        if ray:
            require(["ray"], "`avs-agent serve --ray`")
        from avs_agent.tools.server.app import check_bind
        from avs_agent.tools.server.settings import TOKEN_ENV

        settings = settings_from(profile, config, set_)
        require_for(settings)
        host = host or settings.serve.host
        port = port if port is not None else settings.serve.port
        token = os.environ.get(TOKEN_ENV) or None
        check_bind(host, token)
        if ray:
            from avs_agent.tools.server.ray_serve import run_ray

            run_ray(settings.tool_config(), tools=tools, host=host, port=port, token=token)
            return

        import logging

        import uvicorn

        from avs_agent.tools.server.app import build_app

        logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        with err.status(f"loading the {settings.profile} models", spinner="dots"):
            app_ = build_app(settings.tool_config(), tools=tools, token=token, load=True)
        served = ", ".join(f"{t} ({n})" for t, n in app_.state.dispatcher.info()["tools"].items())
        err.print(
            f"serving {served} on http://{host}:{port}"
            + (" (token required)" if token else " (no token: loopback only)"),
            highlight=False,
        )
        uvicorn.run(
            app_,
            host=host,
            port=port,
            log_level=log_level.lower(),
            access_log=False,
            timeout_graceful_shutdown=5,
        )
