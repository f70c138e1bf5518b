"""Perception cache: tool outputs stored on disk by content hash, so a second strategy, LLM backend or
rerun over the same clips reuses them instead of running the models again.

``cached_toolset(toolset, cache_dir, fingerprint)`` returns a ``Toolset`` whose tools are proxies of
the originals. A call's key hashes the tool's name, the method, the ``fingerprint`` (the model
settings: sources, revisions, thresholds) and the content of every argument (image and waveform
bytes, shapes, dtypes, frame aspect, segment times, strings, numbers). Batch methods (``tag``,
``caption``, ``score``) are cached per item, so a batch whose items were partly seen runs the model
only on the new ones. Other attributes pass through to the wrapped tool.

Entries are pickles written atomically (temporary file + rename), so concurrent workers and a killed
process never leave a torn entry. The cache holds outputs of this project's own tools, in a folder
the user chose; it is not meant for files from elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import threading
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from avs_agent.tools.protocols import TOOLS
from avs_agent.tools.settings import ToolConfig

# method name -> position of the batch argument whose items are cached one by one
BATCH_METHODS = {"tag": 0, "caption": 0, "score": 0, "evidence": 0}
CACHED_METHODS = {
    "tag",
    "caption",
    "score",
    "evidence",
    "ground",
    "detect_all",
    "proposals",
    "check",
    "match",
    "sound_sources",
    "covers",
}


def _feed(h: Any, obj: Any) -> None:
    """Feed an argument's content into hash ``h`` (type-tagged, so different types never collide)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    elif isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        h.update(f"nd:{arr.dtype.str}:{arr.shape};".encode())
        h.update(arr.tobytes())
    elif isinstance(obj, (list, tuple)):
        h.update(f"seq:{len(obj)}[".encode())
        for item in obj:
            _feed(h, item)
        h.update(b"]")
    elif isinstance(obj, dict):
        h.update(f"map:{len(obj)}{{".encode())
        for k in sorted(obj, key=str):
            _feed(h, str(k))
            _feed(h, obj[k])
        h.update(b"}")
    elif hasattr(obj, "model_dump_json"):  # pydantic
        h.update(f"pd:{type(obj).__name__}:".encode() + obj.model_dump_json().encode())
    elif is_dataclass(obj):
        h.update(f"dc:{type(obj).__name__}(".encode())
        for f in fields(obj):
            if f.name == "index" or f.name == "time_s":  # a frame's position does not change what it shows
                continue
            _feed(h, f.name)
            _feed(h, getattr(obj, f.name))
        h.update(b")")
    else:
        raise TypeError(f"cannot hash an argument of type {type(obj).__name__} for the perception cache")


def content_key(*parts: Any) -> str:
    """Hex sha256 of the content of ``parts``."""
    h = hashlib.sha256()
    for part in parts:
        _feed(h, part)
    return h.hexdigest()


class DiskCache:
    """Pickled values in ``root/ab/<key>.pkl``, with an in-memory layer and hit/miss counters."""

    def __init__(self, root: str | Path, memory: bool = True):
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)
        self._memory: dict[str, Any] | None = {} if memory else None
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.pkl"

    def get(self, key: str) -> tuple[bool, Any]:
        if self._memory is not None and key in self._memory:
            with self._lock:
                self.hits += 1
            return True, self._memory[key]
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                value = pickle.load(f)
        except (FileNotFoundError, EOFError, pickle.UnpicklingError):
            with self._lock:
                self.misses += 1
            return False, None
        with self._lock:
            self.hits += 1
        if self._memory is not None:
            self._memory[key] = value
        return True, value

    def put(self, key: str, value: Any) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "wb") as f:
            pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
        if self._memory is not None:
            self._memory[key] = value

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses}


class CachedTool:
    """A proxy of one tool: cached methods look up the disk cache first; everything else passes through."""

    def __init__(self, tool: Any, cache: DiskCache, fingerprint: str):
        self._tool = tool
        self._cache = cache
        self._fingerprint = fingerprint
        self._tool_id = f"{type(tool).__module__}.{type(tool).__qualname__}:{getattr(tool, 'name', '')}"

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._tool, attr)
        if attr in CACHED_METHODS and callable(value):
            if attr in BATCH_METHODS:
                return lambda *a, **kw: self._batched(attr, value, a, kw)
            return lambda *a, **kw: self._single(attr, value, a, kw)
        return value

    def _key(self, method: str, args: tuple, kwargs: dict) -> str:
        return content_key(self._tool_id, self._fingerprint, method, list(args), kwargs)

    def _single(self, method: str, fn: Any, args: tuple, kwargs: dict) -> Any:
        key = self._key(method, args, kwargs)
        hit, value = self._cache.get(key)
        if hit:
            return value
        value = fn(*args, **kwargs)
        self._cache.put(key, value)
        return value

    def _batched(self, method: str, fn: Any, args: tuple, kwargs: dict) -> Any:
        pos = BATCH_METHODS[method]
        items = list(args[pos]) if len(args) > pos else None
        if not items:
            return self._single(method, fn, args, kwargs)
        rest = args[:pos] + args[pos + 1 :]
        keys = [self._key(method, (item, *rest), kwargs) for item in items]
        results: list[Any] = [None] * len(items)
        missing = []
        for i, key in enumerate(keys):
            hit, value = self._cache.get(key)
            if hit:
                results[i] = value
            else:
                missing.append(i)
        if missing:
            sub = args[:pos] + ([items[i] for i in missing],) + args[pos + 1 :]
            computed = fn(*sub, **kwargs)
            for i, value in zip(missing, list(computed), strict=True):
                self._cache.put(keys[i], value)
                results[i] = value
        if method in ("score", "evidence"):
            n_texts = len(args[1]) if len(args) > 1 else len(kwargs.get("texts", []))
            return np.stack(results).astype(np.float32) if results else np.zeros((0, n_texts), np.float32)
        return results


def cached_toolset(toolset: Any, cache_dir: str | Path, fingerprint: str) -> Any:
    """A copy of ``toolset`` (an ``tools.wiring.Toolset``) whose tools read and fill the disk cache
    in ``cache_dir``. ``fingerprint`` must change whenever the models or their settings do."""
    cache = DiskCache(cache_dir)
    changes = {}
    for name in TOOLS:
        tool = getattr(toolset, name, None)
        if tool is not None and not isinstance(tool, CachedTool):
            changes[name] = CachedTool(tool, cache, fingerprint)
    wrapped = replace(toolset, **changes)
    wrapped.cache = cache  # type: ignore[attr-defined]
    return wrapped


def tools_code_version() -> str:
    """Hash of the tools' own source files, so changed tool code never reuses stale cached outputs."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).resolve().parent.rglob("*.py")):
        h.update(path.relative_to(Path(__file__).resolve().parent).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def settings_fingerprint(settings: ToolConfig) -> str:
    """What decides tool outputs: the tools section of the ``ToolConfig``, where the weights
    live, the media settings, and the tools' code."""
    data = {
        "tools": settings.tools.model_dump(mode="json"),
        "models_dir": str(settings.models_dir),
        "media": settings.media.model_dump(mode="json"),
        "code": tools_code_version(),
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
