"""CLAP audio-text scoring behind the ``AudioTextScorer`` protocol, two backends with one interface.

- ``ClapScorer``: transformers ``ClapModel`` + ``ClapProcessor`` (e.g. ``laion/clap-htsat-unfused``).
- ``LaionClapScorer``: the ``laion-clap`` package (``CLAP_Module`` + a ``.pt`` checkpoint). It pins
  numpy<2 and fetches tokenizers from the hub when imported, so it cannot share this project's
  environment; it is imported lazily and only when configured.

Texts are wrapped in prompt templates ("the sound of a {x}"); with several templates the text
embeddings are averaged. Scores: ``mode='softmax'`` (default) is CLAP's zero-shot rule, a softmax over
the given texts of the scaled cosine similarities (rows sum to 1); ``mode='cosine'`` maps the cosine
similarity to [0, 1] as (1 + cos) / 2, independent of the other texts. Audio is resampled from 16 kHz
to the model's rate (48 kHz) before the feature extractor.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from avs_agent.tools.full import hf
from avs_agent.tools.locate import hub_offline
from avs_agent.tools.types import SAMPLE_RATE, AudioSegment

DEFAULT_TEMPLATES = ("the sound of a {x}",)
CLAP_RATE = 48_000


def apply_templates(texts: list[str], templates: tuple[str, ...] | list[str]) -> list[list[str]]:
    """For each text, its prompts (a text that already mentions 'sound' is used as is)."""
    out = []
    for t in texts:
        t = t.strip()
        if "sound" in t.lower() or not templates:
            out.append([t])
        else:
            out.append([tpl.format(x=t) for tpl in templates])
    return out


def resample(wave: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """(n,) float32 at rate_in -> (m,) float32 at rate_out (polyphase)."""
    if rate_in == rate_out:
        return wave.astype(np.float32)
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(rate_in, rate_out)
    return resample_poly(wave, rate_out // g, rate_in // g).astype(np.float32)


def similarity_to_scores(audio_emb: np.ndarray, text_emb: np.ndarray, scale: float, mode: str) -> np.ndarray:
    """audio_emb: (A, D), text_emb: (T, D), both L2-normalised -> (A, T) float32 in [0, 1]."""
    cos = audio_emb @ text_emb.T
    if mode == "cosine":
        return ((1.0 + cos) / 2.0).astype(np.float32)
    logits = scale * cos
    logits = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class _ClapBase:
    """Shared scoring logic; backends implement ``_embed_audio`` and ``_embed_texts``."""

    name = "clap"

    def __init__(
        self,
        model: hf.Location,
        templates: list[str] | tuple[str, ...] = DEFAULT_TEMPLATES,
        mode: str = "softmax",
        options: dict[str, Any] | None = None,
    ):
        self.loc = model
        if mode not in ("softmax", "cosine"):
            raise ValueError(f"CLAP score mode must be 'softmax' or 'cosine', got {mode!r}")
        self.templates = tuple(templates)
        self.mode = mode
        self.options = dict(options or {})
        self._text_cache: dict[str, np.ndarray] = {}

    def warm_up(self) -> None:
        self.score([AudioSegment.silence()], ["dog"])

    def evidence(self, audio: list[AudioSegment], texts: list[str]) -> np.ndarray:
        """CLAP is a model of its own: its scores are the decision's ``clap`` term."""
        return self.score(audio, texts)

    def score(self, audio: list[AudioSegment], texts: list[str]) -> np.ndarray:
        """(len(audio), len(texts)) float32 scores in [0, 1]."""
        if not audio or not texts:
            return np.zeros((len(audio), len(texts)), np.float32)
        text_emb = self.text_embeddings(texts)
        audio_emb = self.audio_embeddings(audio)
        return similarity_to_scores(audio_emb, text_emb, self._logit_scale(), self.mode)

    def text_embeddings(self, texts: list[str]) -> np.ndarray:
        """(T, D) L2-normalised; the mean over each text's templates (cached per prompt)."""
        prompts = apply_templates(texts, self.templates)
        missing = [p for ps in prompts for p in ps if p not in self._text_cache]
        if missing:
            emb = _normalise(self._embed_texts(list(dict.fromkeys(missing))))
            self._text_cache.update(zip(dict.fromkeys(missing), emb, strict=True))
        return _normalise(np.stack([np.mean([self._text_cache[p] for p in ps], axis=0) for ps in prompts]))

    def audio_embeddings(self, audio: list[AudioSegment]) -> np.ndarray:
        """(A, D) L2-normalised."""
        waves = [resample(seg.waveform, SAMPLE_RATE, CLAP_RATE) for seg in audio]
        waves = [w if len(w) else np.zeros(CLAP_RATE // 10, np.float32) for w in waves]
        return _normalise(self._embed_audio(waves))

    def _logit_scale(self) -> float:
        return 100.0

    def _embed_audio(self, waves: list[np.ndarray]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _embed_texts(self, texts: list[str]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


class ClapScorer(_ClapBase):
    """transformers ``ClapModel`` (LAION CLAP weights in transformers format)."""

    name = "clap"

    @property
    def device(self) -> str:
        return hf.pick_device(self.options)

    def _load(self) -> tuple[Any, Any]:
        return hf.load_model_and_processor(
            "clap", self.loc, "ClapModel", "ClapProcessor", "CLAP", self.device
        )

    def _logit_scale(self) -> float:
        model, _ = self._load()
        scale = getattr(model, "logit_scale_a", None)
        return float(scale.exp().item()) if scale is not None else 100.0

    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        model, processor = self._load()
        inputs = processor.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            out = model.get_text_features(**{k: v.to(self.device) for k, v in inputs.items()})
            out = getattr(out, "pooler_output", out)
            return out.float().cpu().numpy()

    def _embed_audio(self, waves: list[np.ndarray]) -> np.ndarray:
        import torch

        model, processor = self._load()
        fe = processor.feature_extractor
        # Windows of the extractor's length, embeddings averaged per segment: no random crop.
        n = int(getattr(fe, "nb_max_samples", 10 * CLAP_RATE))
        windows, owner = [], []
        for i, w in enumerate(waves):
            for start in range(0, max(len(w), 1), n):
                piece = w[start : start + n]
                if start and len(piece) < n // 4:
                    break  # a short tail adds little and is mostly padding
                windows.append(piece)
                owner.append(i)
        inputs = fe(windows, sampling_rate=CLAP_RATE, return_tensors="pt")
        with torch.inference_mode():
            out = model.get_audio_features(**{k: v.to(self.device) for k, v in inputs.items()})
            out = getattr(out, "pooler_output", out)
            emb = _normalise(out.float().cpu().numpy())
        owner_arr = np.asarray(owner)
        return np.stack([emb[owner_arr == i].mean(axis=0) for i in range(len(waves))])


class LaionClapScorer(_ClapBase):
    """The ``laion-clap`` package: ``CLAP_Module(enable_fusion, amodel)`` + ``load_ckpt(path)``.

    The checkpoint is a local ``.pt`` file or a file of a hub repo (``options['filename']``, default
    ``630k-audioset-best.pt`` from ``lukewys/laion_clap``). ``options``: ``enable_fusion`` (False),
    ``amodel`` ('HTSAT-tiny'), ``tmodel`` ('roberta').
    """

    name = "laion_clap"

    def _load(self) -> Any:
        def load() -> Any:
            import os

            os.environ.setdefault("HF_HUB_OFFLINE", "1") if hub_offline() else None
            try:
                import laion_clap
            except ImportError as exc:
                raise self.loc.not_found(
                    "laion-clap",
                    "the laion-clap package is not installed (pip install laion-clap; it needs numpy<2)",
                ) from exc
            ckpt = self.loc.file(
                "laion-clap checkpoint", str(self.options.get("filename", "630k-audioset-best.pt"))
            )
            module = laion_clap.CLAP_Module(
                enable_fusion=bool(self.options.get("enable_fusion", False)),
                amodel=str(self.options.get("amodel", "HTSAT-tiny")),
                tmodel=str(self.options.get("tmodel", "roberta")),
                device=hf.pick_device(self.options),
            )
            module.load_ckpt(str(ckpt), verbose=False)
            return module

        return hf.cached(("laion_clap", self.loc.where, tuple(sorted(self.options.items()))), load)

    def _logit_scale(self) -> float:
        module = self._load()
        scale = getattr(getattr(module, "model", None), "logit_scale_a", None)
        try:
            return float(scale.exp().item()) if scale is not None else 100.0
        except AttributeError:
            return 100.0

    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return np.asarray(self._load().get_text_embedding(texts, use_tensor=False), np.float32)

    def _embed_audio(self, waves: list[np.ndarray]) -> np.ndarray:
        import torch

        n = max(len(w) for w in waves)
        batch = np.zeros((len(waves), n), np.float32)
        for i, w in enumerate(waves):
            batch[i, : len(w)] = w
        with torch.inference_mode():
            return np.asarray(
                self._load().get_audio_embedding_from_data(x=batch, use_tensor=False), np.float32
            )
