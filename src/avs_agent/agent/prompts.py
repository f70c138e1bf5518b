"""Prompt templates are files in prompts/; every use records the prompt's name and hash.

Templates use ``$name`` placeholders (``string.Template``), so JSON braces in them need no escaping.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from string import Template


@dataclass(frozen=True)
class Prompt:
    name: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]

    def render(self, **values: object) -> str:
        return Template(self.text).substitute({k: str(v) for k, v in values.items()})


@cache
def load_prompt(name: str) -> Prompt:
    return Prompt(name, resources.files("avs_agent.prompts").joinpath(f"{name}.md").read_text())


def prompt_hashes() -> dict[str, str]:
    """name -> hash of every prompt file (recorded with eval runs)."""
    return {
        p.name.removesuffix(".md"): load_prompt(p.name.removesuffix(".md")).sha256
        for p in resources.files("avs_agent.prompts").iterdir()
        if p.name.endswith(".md")
    }
