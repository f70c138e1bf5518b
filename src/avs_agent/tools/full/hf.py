"""Shared loading for the full-profile models (Hugging Face transformers and friends).

A model is a ``tools.locate.Location`` (``locate``: a hub id with a pinned revision, or a local folder
holding the files ``save_pretrained`` writes). ``HF_HUB_OFFLINE`` (read at call time) makes loading use
only local folders and the hub cache. When weights can be found neither locally nor on a reachable hub,
loading raises the location's ``ModelNotFoundError``: one line naming the model and how to get it.

Models are loaded lazily on first use and cached per process (``cached``), keyed by what was loaded
and where it runs. torch and transformers are imported inside the functions.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from avs_agent.tools.locate import Location, first_line

T = TypeVar("T")


def load_pretrained(cls: Any, loc: Location, what: str | None = None, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` on a location, turning 'cannot find the files' into ModelNotFoundError."""
    _quiet_transformers()
    what = what or getattr(cls, "__name__", "model")
    if loc.path is not None and not loc.path.exists():
        raise loc.not_found(what, "no such folder")
    name, extra = loc.pretrained_args
    try:
        return cls.from_pretrained(name, **extra, **kwargs)
    except (OSError, ValueError) as exc:
        if _is_missing_files(exc):
            raise loc.not_found(what, first_line(exc)) from None
        raise


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
