"""Shared fixtures. ../shared (models and real clips) is found through AVS_AGENT_SHARED, default
../shared beside the project. Tests that need it fail (not skip) when it is missing, so CI never passes
without running them."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AVS_AGENT_SHARED", PROJECT_ROOT.parent / "shared")).resolve()
DEV_SET = SHARED / "data" / "davis_av_dev"

# One OpenMP thread (torch, OpenBLAS) unless set: the tiny random checkpoints and the small arrays of
# the tests run faster on one thread than on two threads that share two cores with the rest of the
# run (the full-profile tests: about half the CPU time). Read once, when torch and numpy load.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# The whole session (module- and session-scoped fixtures included, which run outside the per-test
# fixture below) sees no user AVS_AGENT_* settings and finds the lite models in ../shared, wherever
# the checkout lives (the settings' default models_dir is relative to the working directory).
for _key in [k for k in os.environ if k.startswith("AVS_AGENT_") and k != "AVS_AGENT_SHARED"]:
    del os.environ[_key]
os.environ["AVS_AGENT_MODELS_DIR"] = str(SHARED / "models")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    assert (SHARED / "models").is_dir(), f"../shared not found at {SHARED}: set AVS_AGENT_SHARED"
    return SHARED


@pytest.fixture(scope="session")
def models_dir(shared_dir: Path) -> Path:
    return shared_dir / "models"


@pytest.fixture(scope="session")
def dev_set(shared_dir: Path) -> Path:
    assert DEV_SET.is_dir(), f"dev clips not found at {DEV_SET}"
    return DEV_SET


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Every full-profile model as a tiny random checkpoint (tests/tiny_models.py), built once per
    session: ``{config key: folder}`` (needs torch and transformers)."""
    from tests import tiny_models

    return tiny_models.build_all(tmp_path_factory.mktemp("tiny_models"), include_sam2=True)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path_factory):
    """Tests see no user AVS_AGENT_* settings except the models folder, and write chat state to tmp."""
    for key in list(os.environ):
        if key.startswith("AVS_AGENT_") and key not in ("AVS_AGENT_SHARED",):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AVS_AGENT_MODELS_DIR", str(SHARED / "models"))
    monkeypatch.setenv(
        "AVS_AGENT_CHAT__CHECKPOINT_PATH", str(tmp_path_factory.mktemp("chat") / "chat.sqlite")
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        """The non-blank lines of stderr (a user's error is exactly one)."""
        return [ln for ln in self.stderr.splitlines() if ln.strip()]


def run_cli(*args: str, input: str | None = None, env: dict[str, str | None] | None = None) -> CliResult:
    """``avs-agent ARGS`` in this process: the console script's own ``main()`` (its one-line errors and
    exit codes, not only the Typer app's), stdin, stdout and stderr through Typer's CliRunner. Tests of
    what only a separate process shows (the installed script, a server, a missing package) keep a
    subprocess."""
    from typer.testing import CliRunner

    from avs_agent.apps.cli import main

    code = 0
    with CliRunner().isolation(input=input, env=env) as (out, err, _):
        with mock.patch.object(sys, "argv", ["avs-agent", *args]):
            try:
                main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        sys.stdout.flush()
        sys.stderr.flush()
        stdout, stderr = out.getvalue().decode(), err.getvalue().decode()
    return CliResult(code, stdout, stderr)


def dev_clip_paths(name: str) -> tuple[Path, Path, Path]:
    """(frames folder, wav, gt masks folder) of a dev clip by name."""
    import csv

    with open(DEV_SET / "s4_meta_data.csv") as f:
        row = next(r for r in csv.DictReader(f) if r["name"] == name)
    cat = row["category"]
    base = DEV_SET / "s4_data"
    return (
        base / "visual_frames" / "test" / cat / name,
        base / "audio_wav" / "test" / cat / f"{name}.wav",
        base / "gt_masks" / "test" / cat / name,
    )


# ---------------------------------------------------------------- the LLM tests' clip (fake servers)
LLM_CLIP = "pets_great_pyrenees_177_bark_01"
"""A barking dog, two people and a car behind it, a helicopter heard: the LLM backend tests' clip."""
LLM_EVIDENCE = (
    "agent.decision.detection_floor=0.12",
    "agent.decision.clip_weight=0.7",
    "agent.decision.second_source_ratio=1.0",
)
"""A detection floor low enough that the car behind the dog is a candidate of every frame's table;
each second inheriting most of the clip's bark and no second source, so that the rules choose the dog
alone on every frame (what an LLM choosing the car must be told from)."""
LLM_SETS = tuple(x for o in LLM_EVIDENCE for x in ("--set", o))
"""The same as CLI options."""


@pytest.fixture(scope="session")
def llm_clip(dev_set):
    from avs_agent.tools.media import load_clip

    frames, wav, _ = dev_clip_paths(LLM_CLIP)
    return load_clip(frames, wav)


@pytest.fixture(scope="session")
def llm_rules_answer(llm_clip):
    """What the rules answer on the LLM tests' clip (what an LLM falling back must reproduce)."""
    from avs_agent.agent.run import run_clip
    from avs_agent.agent.settings import load_settings
    from avs_agent.tools.wiring import get_toolset

    s = load_settings(overrides=[*LLM_EVIDENCE])
    return run_clip(llm_clip, s, get_toolset(s.tool_config()))


def llm_settings(srv, *overrides: str, **extra):
    """Settings pointing the LLM backend at a fake server (its protocol), at the LLM tests' floor."""
    from avs_agent.agent.settings import load_settings

    over = [
        f"llm.backend={srv.protocol}",
        f"llm.base_url={srv.url}",
        "llm.model=fake",
        "llm.timeout_s=5",
        *LLM_EVIDENCE,
        *overrides,
    ]
    return load_settings(overrides=over + [f"{k}={v}" for k, v in extra.items()])
