"""MkDocs hook: the settings reference (docs/settings.md), generated from the pydantic settings.

The page holds the marker ``<!-- settings-reference -->``; this hook replaces it with one table per
settings section, walked from ``avs_agent.agent.settings.Settings``: each field's dotted key (what
``--set`` takes), its type, its default, the values the profile files (``configs/lite.yaml``,
``configs/full.yaml``) set, and its description (``Field(description=...)``, else the docstring under
the field). The code is the only source, so the page cannot drift from it. A field without a
description is a warning, so ``mkdocs build --strict`` fails on it.

The checkout's ``src/`` comes first on ``sys.path``: the page documents this tree, not whatever
version of avs-agent is installed.
"""

from __future__ import annotations

import ast
import inspect
import logging
import sys
import textwrap
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

log = logging.getLogger("mkdocs.plugins.settings_reference")
ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- settings-reference -->"
PAGE = "settings.md"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise PluginError(f"docs/{PAGE} lost its marker {MARKER}")
    return markdown.replace(MARKER, reference())


def reference() -> str:
    sys.path.insert(0, str(ROOT / "src"))
    try:
        import yaml
        from pydantic import BaseModel

        from avs_agent.agent.settings import Settings
    finally:
        sys.path.pop(0)
    configs = ROOT / "src/avs_agent/configs"
    profiles = {p: yaml.safe_load((configs / f"{p}.yaml").read_text()) or {} for p in ("lite", "full")}
    out: list[str] = []
    _section(Settings, None, "", profiles, out, BaseModel)
    return "\n".join(out)


def _section(cls, value, prefix: str, profiles: dict, out: list[str], base, intro: str = "") -> None:
    """One table for ``cls``'s plain fields, then a section per nested settings model."""
    rows, nested = [], []
    for name, field in cls.model_fields.items():
        key = f"{prefix}{name}"
        # the parent's default instance holds the nested defaults (ModelSpec(source=...) per tool);
        # the top level is read from its fields, never instantiated (that would read the environment)
        default = getattr(value, name) if value is not None else field.get_default()
        sub = _model_class(field.annotation, base)
        if sub is not None and default is not None:
            nested.append((sub, default, key, _describe(cls, name, field)))
            continue
        description = _describe(cls, name, field)
        if not description:
            log.warning(
                f"settings reference: {key} ({cls.__name__}) has no description: give it "
                "Field(description=...) or a docstring under the field"
            )
        cells = [f"`{key}`", _type(field.annotation), _default(field, default), _profiles(profiles, key)]
        rows.append("| " + " | ".join([*cells, _cell(description)]) + " |")
    title = prefix.rstrip(".") or "top level"
    out.append(f"## `{title}`\n" if prefix.count(".") <= 1 else f"### `{title}`\n")
    doc = intro or _class_doc(cls)
    if doc:
        out.append(doc + "\n")
    module = Path(inspect.getsourcefile(cls)).resolve().relative_to(ROOT)
    env = "AVS_AGENT_" + "__".join(p.upper() for p in prefix.rstrip(".").split(".") if p)
    out.append(
        f"Defined in `{module}` (`{cls.__name__}`). "
        f"Environment: `{env + '__' if prefix else 'AVS_AGENT_'}<FIELD>`.\n"
    )
    if rows:
        out.append("| key | type | default | profile files | description |")
        out.append("|---|---|---|---|---|")
        out.extend(rows)
        out.append("")
    for sub, default, key, doc in nested:
        _section(sub, default, key + ".", profiles, out, base, intro=_cell(doc))


def _model_class(annotation, base):
    """The settings model a field holds (``Foo`` or ``Foo | None``), else None."""
    if isinstance(annotation, type) and issubclass(annotation, base):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, base)]
        return models[0] if len(models) == 1 else None
    return None


def _describe(cls, name: str, field) -> str:
    """``Field(description=...)``, else the docstring written under the field in its class."""
    if field.description:
        return field.description
    for klass in cls.__mro__:
        doc = _attribute_docs(klass).get(name)
        if doc:
            return doc
    return ""


@cache
def _attribute_docs(klass) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(klass))
    except (OSError, TypeError):
        return {}
    body = ast.parse(source).body[0].body
    docs = {}
    for node, after in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _class_doc(cls) -> str:
    doc = cls.__dict__.get("__doc__")
    return " ".join(inspect.cleandoc(doc).split()) if doc else ""


def _type(annotation) -> str:
    return _cell(_type_name(annotation))


def _type_name(t) -> str:
    origin = typing.get_origin(t)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(t))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(t))
    if t is type(None):
        return "None"
    if t is Any:
        return "Any"
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_name(a) for a in typing.get_args(t))}]"
    return getattr(t, "__name__", str(t))


def _default(field, value) -> str:
    if field.is_required() and value is None:
        return "required"
    if field.default_factory is not None and not isinstance(value, dict | list):
        factory = field.default_factory
        doc = inspect.getdoc(factory) or ""
        return _cell(f"`{factory.__name__}()`: {' '.join(doc.split())}" if doc else f"`{factory.__name__}()`")
    return _cell(f"`{_yaml(value)}`")


def _yaml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict | list):
        import json

        return json.dumps(value)
    if isinstance(value, str) and value == "":
        return '""'
    return str(value)


def _profiles(profiles: dict[str, Any], key: str) -> str:
    found = []
    for name, data in profiles.items():
        node: Any = data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            found.append(f"{name}: `{_yaml(node)}`")
    return _cell("; ".join(found))


def _cell(text: str) -> str:
    """Table-safe: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")
