"""The layers of the house (README "Layout") hold: import-linter's contracts in pyproject.toml pass, name
every module they are about, and excuse nothing."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _contracts() -> dict[str, dict]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["name"]: c for c in cfg["contracts"]}


def _modules(package: str) -> set[str]:
    """Direct children of a package folder: modules and subpackages, dotted."""
    folder = ROOT / package.replace(".", "/")
    out = {f"{package}.{p.stem}" for p in folder.glob("*.py") if p.stem != "__init__"}
    return out | {f"{package}.{d.name}" for d in folder.iterdir() if (d / "__init__.py").is_file()}


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "broken" in done.stdout and " 0 broken" in done.stdout


def test_contracts_cover_every_module_and_excuse_nothing():
    contracts = _contracts()
    assert contracts and all("ignore_imports" not in c for c in contracts.values())
    core = next(c for n, c in contracts.items() if n.startswith("the agent core"))
    assert set(core["source_modules"]) == _modules("agent") - {"agent.apps"}
    tools = next(c for n, c in contracts.items() if n.startswith("tool modules never import the tool server"))
    server = set(tools["forbidden_modules"])
    assert server == {"tools.server.app", "tools.server.ray_serve"}
    expected = (_modules("tools") - {"tools.server"}) | (_modules("tools.server") - server)
    assert set(tools["source_modules"]) == expected
