"""Audio-text scoring without CLAP (lite): how strongly the audio's tags point at each text.

score(audio, text) = max over the audio's tags of tag score x how strongly the tag names the text as its
source (the text matcher's ``sound_sources``: sentence embeddings over the AudioSet ontology). It plays
CLAP's part in the lite profile (the baselines' scores); both implement ``AudioTextScorer``. Unlike
CLAP's, its scores add no evidence term of their own to the agent's decision (``evidence``).
"""

from __future__ import annotations

import numpy as np

from avs_agent.tools.protocols import AudioTagger, TextMatcher
from avs_agent.tools.types import AudioSegment, AudioTags


class TagEmbeddingScorer:
    name = "tag-embedding"

    def __init__(self, tagger: AudioTagger, matcher: TextMatcher, top_k: int = 10, min_score: float = 0.05):
        self.tagger = tagger
        self.matcher = matcher
        self.top_k = top_k
        self.min_score = min_score

    def warm_up(self) -> None:
        self.score([AudioSegment.silence()], ["dog"])

    def score(self, audio: list[AudioSegment], texts: list[str]) -> np.ndarray:
        return self.score_tags(self.tagger.tag(audio), texts)

    def evidence(self, audio: list[AudioSegment], texts: list[str]) -> np.ndarray:
        """Zeros: these scores read the audio tags, whose evidence the decision's tag terms already
        carry (counting it twice would weigh the tags twice)."""
        return np.zeros((len(audio), len(texts)), np.float32)

    def score_tags(self, tags: list[AudioTags], texts: list[str]) -> np.ndarray:
        """(len(tags), len(texts)) scores from tags already computed."""
        out = np.zeros((len(tags), len(texts)), np.float32)
        for i, t in enumerate(tags):
            top = t.top(self.top_k, self.min_score)
            if not top or not texts:
                continue
            sources = self.matcher.sound_sources([lab for lab, _ in top], texts)
            for (_, tag_score), matches in zip(top, sources, strict=True):
                for text, strength in matches:
                    j = texts.index(text)
                    out[i, j] = max(out[i, j], tag_score * strength)
        return out
