"""YAMNet audio tagger (lite): AudioSet's 521 classes from a TFLite model.

The model scores one 0.975-s window (15600 samples at 16 kHz) per call. A segment's tags are the
per-class maximum over window positions with a 0.5-s hop (a mean would dilute a single bark into
'Silence'), and each position's score is the mean over ``FRAMINGS`` framings ``FRAMING_STEP`` samples
apart: where YAMNet's 10-ms spectrogram grid happens to fall moves one window's scores by as much as
a codec does (measured on the 40 dev clips, 2026-12-03: a 2.5-ms shift of a 1-s segment moves its tags
scoring >= 0.1 by 0.066 on average, AAC at 48 kHz by 0.050), and the mean over the grid's phases is
what the sound says, not where the grid fell (AAC moved those means by 0.032).
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
FRAMINGS = 4
"""Framings averaged per window position: 4 x ``FRAMING_STEP`` spans one hop of YAMNet's spectrogram
(10 ms, 160 samples), so they sample its phase evenly."""
FRAMING_STEP = 40
SPAN = WINDOW + (FRAMINGS - 1) * FRAMING_STEP
"""Samples one window position reads (its framings together)."""


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
    def positions(n: int) -> list[int]:
        """Where the window positions of an ``n``-sample segment start: every ``HOP``, and one aligned
        with the segment's end when the grid leaves more than half a hop of it unheard (a few
        milliseconds more or less, such as a codec's padding, move no window)."""
        starts = list(range(0, max(n - SPAN, 0) + 1, HOP))
        if n - (starts[-1] + SPAN) > HOP // 2:
            starts.append(n - SPAN)
        return starts

    @staticmethod
    def preprocess(segment: AudioSegment) -> np.ndarray:
        """(n,) waveform -> (positions x ``FRAMINGS``, 15600) windows, each position's framings
        together, zero-padded; at least one position."""
        wave = segment.waveform
        if len(wave) < SPAN:
            wave = np.pad(wave, (0, SPAN - len(wave)))
        return np.stack(
            [
                wave[p + k * FRAMING_STEP : p + k * FRAMING_STEP + WINDOW]
                for p in YamnetTagger.positions(len(wave))
                for k in range(FRAMINGS)
            ]
        ).astype(np.float32)

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
        """(positions x ``FRAMINGS``, 521) window scores -> the segment's tags: per class, the mean
        over each position's framings, then the maximum over positions."""
        clip_scores = scores.reshape(-1, FRAMINGS, scores.shape[-1]).mean(axis=1).max(axis=0)
        order = np.argsort(-clip_scores)[: self.top_k]
        return AudioTags(
            start_s=segment.start_s,
            end_s=segment.end_s,
            labels=[self.labels[i] for i in order],
            scores=[round(float(clip_scores[i]), 5) for i in order],
        )


__all__ = ["YamnetTagger", "SAMPLE_RATE"]
