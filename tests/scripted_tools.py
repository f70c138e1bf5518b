"""Scripted tools for scenario tests of the agent's decisions: they implement the tool protocols with
outputs written in the test (the decisions under test are real; only the perception is scripted)."""

from __future__ import annotations

import numpy as np

from avs_agent.tools.types import AudioSegment, AudioTags, Frame, Segments
from avs_agent.tools.wiring import Toolset

H = W = 64


def frame(i: int) -> Frame:
    return Frame(i, i + 0.5, np.full((H, W, 3), 100 + i, np.uint8))


def box_segment(label: str, box: tuple[int, int, int, int], conf: float = 0.9) -> Segments:
    x0, y0, x1, y1 = box
    m = np.zeros((1, H, W), bool)
    m[0, y0:y1, x0:x1] = True
    return Segments(xyxy=[box], mask=m, confidence=[conf], labels=[label], data={"class": [label]})


class ScriptedTagger:
    name = "scripted-tagger"

    def __init__(self, tags: dict[str, float]):
        self.tags = tags

    def warm_up(self) -> None:
        pass

    def tag(self, segments: list[AudioSegment]) -> list[AudioTags]:
        items = sorted(self.tags.items(), key=lambda kv: -kv[1])
        return [
            AudioTags(
                start_s=s.start_s, end_s=s.end_s, labels=[k for k, _ in items], scores=[v for _, v in items]
            )
            for s in segments
        ]


class ScriptedGrounder:
    """phrase -> Segments (or a list of Segments, one per call: the n-th grounding of that phrase)."""

    name = "scripted-grounder"

    def __init__(self, found: dict[str, Segments | list[Segments]]):
        self.found = found
        self.calls: list[tuple[int, tuple[str, ...], float | None]] = []
        self._n: dict[str, int] = {}

    def ground(self, frame: Frame, phrases: list[str], box_threshold: float | None = None) -> Segments:
        self.calls.append((frame.index, tuple(phrases), box_threshold))
        out = []
        for p in phrases:
            item = self.found.get(p)
            if isinstance(item, list):
                k = self._n.get(p, 0)
                self._n[p] = k + 1
                item = item[min(k, len(item) - 1)]
            if item is not None and len(item):
                seg = item[np.arange(len(item))]
                seg.labels = [p] * len(seg)
                out.append(seg)
        return Segments.concat(out, frame.height, frame.width)

    def detect_all(self, frame: Frame) -> Segments:
        return Segments.concat(
            [s if not isinstance(s, list) else s[-1] for s in self.found.values()], frame.height, frame.width
        )

    def proposals(self, frame: Frame) -> list[str]:
        return []  # open vocabulary: it finds any phrase it is given, and proposes none itself

    def words(self, phrases: list[str]) -> list[str]:
        return list(dict.fromkeys(phrases))

    def warm_up(self) -> None:
        pass


class ScriptedScorer:
    name = "scripted-scorer"

    def __init__(self, scores: dict[str, float | list[float]]):
        """text -> score, or one score per audio segment (the seconds, then the whole clip)."""
        self.scores = scores

    def score(self, audio: list[AudioSegment], texts: list[str]) -> np.ndarray:
        def one(t: str, i: int) -> float:
            v = self.scores.get(t, 0.0)
            return v[i] if isinstance(v, list) else v

        return np.asarray([[one(t, i) for t in texts] for i in range(len(audio))], np.float32)

    def evidence(self, audio: list[AudioSegment], texts: list[str]) -> np.ndarray:
        return self.score(audio, texts)  # the scripted scores play CLAP's part

    def warm_up(self) -> None:
        pass


def scripted_toolset(
    matcher,
    tags: dict[str, float],
    found: dict,
    scores: dict[str, float | list[float]],
    vocabulary: list[str],
) -> Toolset:
    return Toolset(
        tagger=ScriptedTagger(tags),
        grounder=ScriptedGrounder(found),
        scorer=ScriptedScorer(scores),
        matcher=matcher,
        vocabulary=vocabulary,
        closed_vocabulary=False,  # the scripted grounder finds any phrase it was given
    )


def clip(n_frames: int = 2):
    from avs_agent.tools.types import Clip

    wave = (0.1 * np.sin(np.arange(16000 * n_frames) / 10)).astype(np.float32)
    segs = [AudioSegment(float(i), float(i + 1), wave[i * 16000 : (i + 1) * 16000]) for i in range(n_frames)]
    return Clip(
        "scripted", [frame(i) for i in range(n_frames)], segs, AudioSegment(0.0, float(n_frames), wave)
    )
