"""The options every `avs-agent` command shares (--profile, --config, --set) and the settings they make.

One place for them, imported by avs_agent.apps.cli and by the command modules it registers (chat, serve, models,
evals), so a command's settings options read and behave the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ProfileOpt = Annotated[
    str | None,
    typer.Option("--profile", help="lite (CPU models; the default) or full (GPU foundation models)"),
]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="YAML file of settings (over the profile's)")
]
FpsOpt = Annotated[
    float | None,
    typer.Option("--fps", help="frames analysed per second (default 1, AVSBench's convention; at most 30)"),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="override any setting, key=value: --set llm.backend=openai (repeatable)"),
]


def settings_from(
    profile: str | None, config: Path | None, overrides: list[str] | None, fps: float | None = None
):
    """Settings with the precedence of agent.settings: profile yaml < --config < env < --set/--profile
    (--fps is ``--set media.fps=N``)."""
    from avs_agent.agent.settings import load_settings
    from avs_agent.tools.errors import ConfigError
    from avs_agent.tools.settings import MAX_FPS

    pairs = list(overrides or ())
    if fps is not None:
        if not 0 < fps <= MAX_FPS:
            raise ConfigError(f"--fps must be above 0 and at most {MAX_FPS:g}, got {fps:g}")
        pairs.append(f"media.fps={fps}")
    return load_settings(profile=profile, config_file=config, overrides=tuple(pairs))


# ------------------------------------------------------------------------------ optional extras
EXTRA_OF_MODULE = {
    "gradio": "ui",
    "fastapi": "serve",
    "uvicorn": "serve",
    "multipart": "serve",
    "prometheus_client": "serve",
    "langchain_openai": "llm",
    "langchain_ollama": "llm",
    "ray": "ray",
    "torch": "full",
    "transformers": "full",
    "huggingface_hub": "full",
    "accelerate": "full",
    "spacy": "full",
    "librosa": "full",
    "segment_anything": "full",
    "onnxruntime": "lite",
    "ai_edge_litert": "lite",
    "tokenizers": "lite",
    "trackers": "lite",
    "supervision": "lite",
}
"""Top-level modules of the optional extras (pyproject.toml) -> the extra that installs them."""


def install_hint(module: str, what: str) -> str | None:
    """One line naming the extra to install for a missing ``module`` (None: not an extra's module)."""
    extra = EXTRA_OF_MODULE.get(module.split(".")[0])
    if extra is None:
        return None
    how = f"pip install 'avs-agent[{extra}]'"
    if extra in ("full", "lite"):
        how += f" (or, in a checkout, bash install.sh {extra})"
    return f"{what} needs the '{extra}' extra ({module.split('.')[0]} is not installed): {how}"


def require(modules: list[str], what: str) -> None:
    """Raise a one-line ``UserError`` naming the extra when one of ``modules`` is not installed."""
    import importlib.util

    from avs_agent.tools.errors import UserError

    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise UserError(install_hint(module, what) or f"{what} needs {module}, which is not installed")


def require_for(settings) -> None:
    """The extras the settings themselves need, checked before any model loads: the profile's local
    tools and the LLM backend."""
    if settings.tools.backend == "local":
        if settings.profile == "full":
            require(["torch", "transformers"], "--profile full")
        else:
            require(["onnxruntime", "ai_edge_litert", "supervision", "trackers"], "the lite profile")
    backend = settings.llm.backend
    if backend in ("openai", "ollama"):
        require([f"langchain_{backend}"], f"llm.backend={backend}")


def installed_profile() -> str:
    """'full' when the full profile's packages are importable, else 'lite'."""
    import importlib.util

    return "full" if all(importlib.util.find_spec(m) for m in ("torch", "transformers")) else "lite"
