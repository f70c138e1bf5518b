"""AudioSet tagging with the Audio Spectrogram Transformer (``ASTForAudioClassification``, 527 AudioSet
labels, e.g. ``MIT/ast-finetuned-audioset-10-10-0.4593``) behind the ``AudioTagger`` protocol.

AST takes a fixed window (1024 frames of 10 ms, 10.24 s for the AudioSet model). A segment longer
than one window is cut into windows; its score for a label is the max over its windows (the
protocol's rule). Shorter segments are padded by the feature extractor. Scores are sigmoid outputs in
[0, 1]. ``tag_clip`` gives the per-second tags and the whole clip's tags in one batched call.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from avs_agent.tools.full import hf
from avs_agent.tools.types import SAMPLE_RATE, AudioSegment, AudioTags


class AstTagger:
    """AST through transformers.

    Args:
        model: where the checkpoint is (``ASTForAudioClassification`` + ``AutoFeatureExtractor``).
        options: ``device``, ``batch_size`` (windows per forward, default 8), ``top_k`` (labels kept
            per segment, default all).
    """

    name = "ast"

    def __init__(self, model: hf.Location, options: dict[str, Any] | None = None) -> None:
        self.loc = model
        self.options = dict(options or {})

    @property
    def device(self) -> str:
        return hf.pick_device(self.options)

    def _load(self) -> tuple[Any, Any]:
        return hf.load_model_and_processor(
            "ast",
            self.loc,
            "ASTForAudioClassification",
            "AutoFeatureExtractor",
            "AST",
            self.device,
            processor_what="AST feature extractor",
        )

    @property
    def labels(self) -> list[str]:
        model, _ = self._load()
        return [model.config.id2label[i] for i in range(len(model.config.id2label))]

    def warm_up(self) -> None:
        self.tag([AudioSegment.silence()])

    def tag(self, segments: list[AudioSegment]) -> list[AudioTags]:
        """One ``AudioTags`` per segment, labels best first."""
        if not segments:
            return []
        windows, owner = self._preprocess(segments)
        probs = self._forward(windows)
        return self._postprocess(segments, probs, owner)

    def tag_clip(self, audio: AudioSegment, seconds: float = 1.0) -> tuple[list[AudioTags], AudioTags]:
        """Tags per ``seconds`` of the clip, and for the whole clip."""
        hop = max(1, int(round(seconds * SAMPLE_RATE)))
        parts = [
            AudioSegment(
                audio.start_s + i / SAMPLE_RATE,
                audio.start_s + min(i + hop, len(audio.waveform)) / SAMPLE_RATE,
                audio.waveform[i : i + hop],
            )
            for i in range(0, max(len(audio.waveform), 1), hop)
        ]
        tags = self.tag(parts + [audio])
        return tags[:-1], tags[-1]

    # --- preprocess / forward / postprocess -----------------------------------------------------
    def _window_samples(self, extractor: Any) -> int:
        frames = int(getattr(extractor, "max_length", 1024))
        return int(frames * SAMPLE_RATE / 100)  # 10 ms hop

    def _preprocess(self, segments: list[AudioSegment]) -> tuple[list[np.ndarray], np.ndarray]:
        _, extractor = self._load()
        n = self._window_samples(extractor)
        windows, owner = [], []
        for i, seg in enumerate(segments):
            w = seg.waveform if len(seg.waveform) else np.zeros(SAMPLE_RATE // 10, np.float32)
            for start in range(0, len(w), n):
                piece = w[start : start + n]
                if start and len(piece) < SAMPLE_RATE // 2:
                    break  # under half a second of tail: already covered by the previous window
                windows.append(piece)
                owner.append(i)
        return windows, np.asarray(owner)

    def _forward(self, windows: list[np.ndarray]) -> np.ndarray:
        """windows of 16 kHz audio -> (n, 527) sigmoid probabilities."""
        import torch

        model, extractor = self._load()
        bs = int(self.options.get("batch_size", 8))
        out = []
        with torch.inference_mode():
            for i in range(0, len(windows), bs):
                feats = extractor(windows[i : i + bs], sampling_rate=SAMPLE_RATE, return_tensors="pt")
                logits = model(**{k: v.to(self.device) for k, v in feats.items()}).logits
                out.append(logits.float().sigmoid().cpu().numpy())
        return np.concatenate(out)

    def _postprocess(
        self, segments: list[AudioSegment], probs: np.ndarray, owner: np.ndarray
    ) -> list[AudioTags]:
        labels = self.labels
        k = int(self.options.get("top_k", len(labels)))
        result = []
        for i, seg in enumerate(segments):
            p = probs[owner == i].max(axis=0)
            order = np.argsort(-p)[:k]
            result.append(
                AudioTags(
                    start_s=seg.start_s,
                    end_s=seg.end_s,
                    labels=[labels[j] for j in order],
                    scores=[float(p[j]) for j in order],
                )
            )
        return result
