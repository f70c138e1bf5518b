"""The layers of the house hold: import-linter's contracts in pyproject.toml pass, and excuse nothing.

One package, ``avs_agent``: the command line (``apps``) above the evals, above the agent, above the
tools; no module below imports one above it. Only the command line and the server itself import the
tool server's app and its Ray deployment."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "avs_agent"


def _contracts() -> dict[str, dict]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["name"]: c for c in cfg["contracts"]}


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " 0 broken" in done.stdout


def test_one_package_and_layers_name_every_part_of_it():
    """The wheel's one top-level package, and every sub-package of it has its place in the layers."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]
    assert cfg["setuptools"]["packages"]["find"] == {"where": ["src"], "include": ["avs_agent*"]}
    assert [p.name for p in (ROOT / "src").iterdir() if p.is_dir() and not p.name.endswith("egg-info")] == [
        "avs_agent"
    ]
    contracts = _contracts()
    assert contracts and all("ignore_imports" not in c for c in contracts.values())
    layers = next(c for c in contracts.values() if c["type"] == "layers")
    named = {m.strip() for layer in layers["layers"] for m in layer.split("|")}
    subpackages = {f"avs_agent.{d.name}" for d in PACKAGE.iterdir() if (d / "__init__.py").is_file()}
    assert named == subpackages
    assert layers["layers"][:4] == ["avs_agent.apps", "avs_agent.evals", "avs_agent.agent", "avs_agent.tools"]
