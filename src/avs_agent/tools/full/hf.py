"""Shared loading for the full-profile models (Hugging Face transformers and friends).

A model is a ``ModelSpec``: a hub id with a pinned revision, or a local folder (absolute, or relative
to ``models_dir``) holding the files ``save_pretrained`` writes. ``HF_HUB_OFFLINE`` (read at call
time) makes loading use only local folders and the hub cache. When weights can be found neither
locally nor on a reachable hub, loading raises ``ModelNotFoundError`` with one line naming the model
and how to get it.

Models are loaded lazily on first use and cached per process (``cached``), keyed by what was loaded
and where it runs. torch and transformers are imported inside the functions.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from avs_agent.tools.errors import ModelNotFoundError

T = TypeVar("T")

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
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
    """

    key: str
    source: str
    path: Path | None
    repo_id: str | None
    revision: str | None

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
        if self.path is not None and self.repo_id is None:
            return f"put the model's files (save_pretrained output) in {self.path} or set {self.key}.source to a hub id or another folder"
        rev = f" --revision {self.revision}" if self.revision else ""
        return (
            f"run `hf download {self.repo_id}{rev}` on a machine that reaches the hub (then copy the cache or "
            f"the folder here), or set {self.key}.source to a local folder saved with save_pretrained"
        )


def locate(key: str, source: str, revision: str | None, models_dir: Path | str | None) -> Location:
    """Resolve a configured source to a local path or a hub id.

    Order: an absolute or ``~``/``.`` path is local; a relative path that exists under ``models_dir`` is
    local; anything shaped like ``org/name`` is a hub id; the rest is a (missing) local path.
    """
    src = source.strip()
    expanded = Path(os.path.expanduser(src))
    if expanded.is_absolute() or src.startswith((".", "~")):
        return Location(key, source, expanded, None, None)
    if models_dir is not None:
        candidate = Path(os.path.expanduser(str(models_dir))) / src
        if candidate.exists():
            return Location(key, source, candidate, None, None)
    if HUB_ID.match(src):
        return Location(key, source, None, src, revision)
    base = Path(os.path.expanduser(str(models_dir))) if models_dir is not None else Path.cwd()
    return Location(key, source, base / src, None, None)


def not_found(loc: Location, what: str, detail: str = "") -> ModelNotFoundError:
    offline = " (HF_HUB_OFFLINE is set)" if hub_offline() and not loc.is_local else ""
    why = f": {detail}" if detail else ""
    return ModelNotFoundError(
        f"{what} for {loc.key} not found at {loc.where}{offline}{why}; {loc.how_to_get()}"
    )


def available(loc: Location, filename: str = "config.json") -> bool:
    """Can this model be loaded without a network? (a local folder/file with ``filename``, or the
    hub cache holding ``filename`` for this revision)."""
    if loc.path is not None:
        if loc.path.is_file():
            return True
        return (loc.path / filename).exists() if filename else loc.path.is_dir()
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return False
    found = try_to_load_from_cache(loc.repo_id, filename, revision=loc.revision)
    return isinstance(found, str)


def load_pretrained(cls: Any, loc: Location, what: str | None = None, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` on a location, turning 'cannot find the files' into ModelNotFoundError."""
    _quiet_transformers()
    what = what or getattr(cls, "__name__", "model")
    if loc.path is not None and not loc.path.exists():
        raise not_found(loc, what, "no such folder")
    name, extra = loc.pretrained_args
    try:
        return cls.from_pretrained(name, **extra, **kwargs)
    except (OSError, ValueError) as exc:
        if _is_missing_files(exc):
            raise not_found(loc, what, _first_line(exc)) from None
        raise


def fetch_file(loc: Location, filename: str, what: str) -> Path:
    """One file of a model: ``path/filename`` for a local folder (or the file itself), else from the hub
    (or its cache when offline)."""
    if loc.path is not None:
        path = loc.path if loc.path.is_file() else loc.path / filename
        if not path.exists():
            raise not_found(loc, what, f"no file {path.name}")
        return path
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:  # pragma: no cover
        raise not_found(loc, what, "huggingface_hub is not installed") from exc
    try:
        return Path(
            hf_hub_download(loc.repo_id, filename, revision=loc.revision, local_files_only=hub_offline())
        )
    except Exception as exc:  # noqa: BLE001 - every hub failure here means 'not available'
        raise not_found(loc, what, _first_line(exc)) from None


def _is_missing_files(exc: BaseException) -> bool:
    text = str(exc).lower()
    keys = (
        "does not appear to have",
        "can't load",
        "cannot find",
        "couldn't connect",
        "not found",
        "no such file",
        "is not a local folder",
        "we couldn't",
        "offline",
        "not a valid model identifier",
        "repository not found",
        "local_files_only",
        "connection",
        "unrecognized model",
    )
    names = {type(e).__name__ for e in (exc, exc.__cause__, exc.__context__) if e is not None}
    hub_errors = {
        "LocalEntryNotFoundError",
        "RepositoryNotFoundError",
        "EntryNotFoundError",
        "RevisionNotFoundError",
        "GatedRepoError",
    }
    return bool(names & hub_errors) or any(k in text for k in keys)


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


_quiet_done = False


def _quiet_transformers() -> None:
    """No progress bars or advisory warnings from transformers while loading."""
    global _quiet_done
    if _quiet_done:
        return
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass
    _quiet_done = True


# --- device and process cache -------------------------------------------------------------------


def pick_device(options: dict[str, Any] | None = None) -> str:
    """``options['device']`` when given, else 'cuda' when available, else 'cpu'."""
    wanted = (options or {}).get("device")
    if wanted:
        return str(wanted)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(options: dict[str, Any] | None, device: str) -> Any:
    """``options['dtype']`` ('float32', 'float16', 'bfloat16') or float32 on CPU / float16 on GPU when
    ``options['half']`` is true."""
    import torch

    name = (options or {}).get("dtype")
    if not name:
        name = "float16" if device.startswith("cuda") and (options or {}).get("half") else "float32"
    return getattr(torch, str(name))


def load_model_and_processor(
    kind: str,
    loc: Location,
    model_class: str,
    processor_class: str,
    what: str,
    device: str,
    processor_what: str | None = None,
    dtype: Any = None,
    **model_kwargs: Any,
) -> tuple[Any, Any]:
    """A transformers model (eval mode, on ``device``) and its processor from one location, loaded once
    per process per (kind, location, device). Classes are named, so transformers is imported only here."""

    def load() -> tuple[Any, Any]:
        import transformers

        processor = load_pretrained(
            getattr(transformers, processor_class), loc, processor_what or f"{what} processor"
        )
        model = load_pretrained(getattr(transformers, model_class), loc, what, **model_kwargs)
        model = model.to(device) if dtype is None else model.to(device, dtype=dtype)
        return model.eval(), processor

    return cached((kind, loc.where, device), load)


_CACHE: dict[tuple[Any, ...], Any] = {}
_LOCK = threading.Lock()


def cached(key: tuple[Any, ...], load: Callable[[], T]) -> T:
    """Load once per process per key (thread-safe); later calls return the same object."""
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
    value = load()
    with _LOCK:
        return _CACHE.setdefault(key, value)
