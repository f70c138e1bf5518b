"""YAMNet audio tagger (lite): AudioSet's 521 classes from a TFLite model.

The model scores one 0.975-s window (15600 samples at 16 kHz) per call. A segment's tags are the
per-class maximum over windows with a 0.5-s hop (a mean would dilute a single bark into 'Silence').
"""

from __future__ import annotations

import csv
from functools import cached_property

import numpy as np

from avs_agent.tools.lite.litert import tflite_interpreter
from avs_agent.tools.locate import Location
from avs_agent.tools.types import SAMPLE_RATE, AudioSegment, AudioTags

WINDOW = 15_600
HOP = 8_000


class YamnetTagger:
    name = "yamnet"

    def __init__(self, model: Location, class_map: Location, top_k: int = 20):
        self.model = model
        self.class_map = class_map
        self.top_k = top_k

    @cached_property
    def labels(self) -> list[str]:
        with open(self.class_map.file("YAMNet class map")) as f:
            return [row["display_name"] for row in csv.DictReader(f)]

    def warm_up(self) -> None:
        self.tag([AudioSegment.silence()])

    def tag(self, segments: list[AudioSegment]) -> list[AudioTags]:
        return [self.postprocess(seg, self._forward(self.preprocess(seg))) for seg in segments]

    @staticmethod
    def preprocess(segment: AudioSegment) -> np.ndarray:
        """(n,) waveform -> (w, 15600) windows, zero-padded; at least one window."""
        wave = segment.waveform
        if len(wave) < WINDOW:
            wave = np.pad(wave, (0, WINDOW - len(wave)))
        starts = list(range(0, len(wave) - WINDOW + 1, HOP))
        if starts[-1] != len(wave) - WINDOW:
            starts.append(len(wave) - WINDOW)
        return np.stack([wave[s : s + WINDOW] for s in starts]).astype(np.float32)

    def _forward(self, windows: np.ndarray) -> np.ndarray:
        """(w, 15600) -> (w, 521) sigmoid scores."""
        interp, lock = tflite_interpreter(self.model, "YAMNet weights")
        inp = interp.get_input_details()[0]["index"]
        out = interp.get_output_details()[0]["index"]
        scores = []
        with lock:
            for window in windows:
                interp.set_tensor(
                    inp, window[None] if len(interp.get_input_details()[0]["shape"]) == 2 else window
                )
                interp.invoke()
                scores.append(interp.get_tensor(out).reshape(-1).copy())
        return np.stack(scores)

    def postprocess(self, segment: AudioSegment, scores: np.ndarray) -> AudioTags:
        clip_scores = scores.max(axis=0)
        order = np.argsort(-clip_scores)[: self.top_k]
        return AudioTags(
            start_s=segment.start_s,
            end_s=segment.end_s,
            labels=[self.labels[i] for i in order],
            scores=[round(float(clip_scores[i]), 5) for i in order],
        )


__all__ = ["YamnetTagger", "SAMPLE_RATE"]
