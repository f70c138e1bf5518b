"""The perception cache: hits by content, per-item batches, misses when content or settings change."""

from __future__ import annotations

import numpy as np
import pytest

from avs_agent.tools.cache import cached_toolset, content_key
from avs_agent.tools.types import AudioSegment, Frame
from test_eval_runner import fake_toolset


def seg(freq: float, start: float = 0.0) -> AudioSegment:
    t = np.arange(16000) / 16000
    return AudioSegment(start, start + 1, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32))


def test_second_call_is_served_from_disk(tmp_path):
    base = fake_toolset()
    ts = cached_toolset(base, tmp_path, "fp1")
    first = ts.tagger.tag([seg(300), seg(400)])
    assert base.tagger.calls == 2
    # a fresh process (new wrapper, empty memory) reads the same entries from disk
    ts2 = cached_toolset(fake_toolset(), tmp_path, "fp1")
    again = ts2.tagger.tag([seg(300), seg(400)])
    assert ts2.tagger._tool.calls == 0
    assert [a.labels for a in again] == [f.labels for f in first] == [["Bark"], ["Vehicle horn"]]
    assert ts2.cache.stats() == {"hits": 2, "misses": 0}


def test_batches_cached_per_item(tmp_path):
    base = fake_toolset()
    ts = cached_toolset(base, tmp_path, "fp")
    ts.tagger.tag([seg(300)])
    out = ts.tagger.tag([seg(300), seg(500)])
    assert base.tagger.calls == 2  # only the new segment ran
    assert [o.labels[0] for o in out] == ["Bark", "Siren"]
    scores = ts.scorer.score([seg(300), seg(400)], ["dog", "car"])
    again = ts.scorer.score([seg(400)], ["dog", "car"])
    assert scores.shape == (2, 2) and np.array_equal(again[0], scores[1])


def test_key_depends_on_content_settings_and_times(tmp_path):
    base = fake_toolset()
    img = np.zeros((16, 16, 3), np.uint8)
    f1, f2 = Frame(0, 0.5, img), Frame(3, 3.5, img.copy())
    ts = cached_toolset(base, tmp_path, "fp")
    ts.grounder.detect_all(f1)
    ts.grounder.detect_all(f2)  # same picture at another time: a hit
    assert base.grounder.calls == 1
    img2 = img.copy()
    img2[0, 0, 0] = 1
    ts.grounder.detect_all(Frame(0, 0.5, img2))
    assert base.grounder.calls == 2
    ts.grounder.detect_all(Frame(0, 0.5, img, aspect=16 / 9))  # the aspect changes what a grounder sees
    assert base.grounder.calls == 3
    other = cached_toolset(base, tmp_path, "fp-other-models")
    other.grounder.detect_all(f1)
    assert base.grounder.calls == 4
    # segment times are part of what a tagger returns
    assert content_key(seg(300, 0.0)) != content_key(seg(300, 1.0))
    assert content_key("a", 1) != content_key("a", "1")


def test_passthrough_and_unhashable(tmp_path):
    ts = cached_toolset(fake_toolset(), tmp_path, "fp")
    assert ts.grounder.name == "fake-grounder" and ts.closed_vocabulary
    with pytest.raises(TypeError):
        content_key(object())
