"""The rules reasoner's decisions on hand-made inputs."""

import numpy as np

from agent.rules import RulesReasoner, salience
from agent.settings import AgentSettings
from agent.state import Candidate, Choice
from tools.types import AudioTags, Segments

R = RulesReasoner(AgentSettings())


def _seg(label, box, conf=0.9, h=20, w=20):
    m = np.zeros((1, h, w), bool)
    x0, y0, x1, y1 = box
    m[0, y0:y1, x0:x1] = True
    return Segments(xyxy=[box], mask=m, confidence=[conf], labels=[label])


def test_source_labels_dedupe_and_threshold():
    clip = AudioTags(start_s=0, end_s=2, labels=["Dog", "Bark", "Noise"], scores=[0.9, 0.5, 0.05])
    frames = [AudioTags(start_s=0, end_s=1, labels=["Bark", "Speech"], scores=[0.8, 0.2])]
    assert R.source_labels(frames, clip) == ["Dog", "Bark", "Speech"]


def test_propose_floors_and_frame_consistency():
    phrases = ["dog", "car", "person"]
    # rows: frame 0, frame 1 (quiet second), whole clip
    ev = np.array([[0.9, 0.05, 0.2], [0.1, 0.0, 0.0], [0.95, 0.1, 0.25]], np.float32)
    out = R.propose(phrases, {}, ev, silent=[False, False])
    assert [c.phrase for c in out[0]] == ["dog"]  # person 0.2 < 0.3 x 0.95: a side-sound, not the source
    assert [c.phrase for c in out[1]] == ["dog"] and out[1][
        0
    ].evidence == 0.475  # inherits half the clip's evidence
    assert R.propose(phrases, {}, ev, silent=[True, True]) == [[], []]


def test_verify_keeps_visible_and_prefers_prominent_among_ties():
    cands = [
        Candidate(phrase="car", evidence=0.8),
        Candidate(phrase="motorcycle", evidence=0.8),
        Candidate(phrase="dog", evidence=0.9),
    ]
    found = {
        "car": _seg("car", (0, 0, 4, 4)),
        "motorcycle": _seg("motorcycle", (0, 0, 15, 15)),
        "dog": Segments.empty(20, 20),
    }
    assert [c.phrase for c in R.verify(cands, found)] == ["motorcycle", "car"]
    assert R.verify(cands, {"dog": Segments.empty(20, 20)}) == []


def test_choose_adds_a_close_second_source_only_first_time():
    vis = [
        Candidate(phrase="dog", evidence=0.9),
        Candidate(phrase="person", evidence=0.6),
        Candidate(phrase="car", evidence=0.2),
    ]
    assert R.choose(vis, 0) == ["dog", "person"]
    assert R.choose(vis, 1) == ["person"]
    assert R.choose(vis[:1] + vis[2:], 0) == ["dog"]  # car too weak to be a second source
    assert R.choose(vis, 5) == []
    # one sound read as two objects ('Engine' names car and motorcycle) is one source, not two
    engine = [
        Candidate(phrase="motorcycle", evidence=0.6, because=["Engine", "Motorcycle"]),
        Candidate(phrase="car", evidence=0.6, because=["Engine"]),
    ]
    assert R.choose(engine, 0) == ["motorcycle"]
    engine[1].because = ["Engine", "Car"]  # a label of its own: two sources
    assert R.choose(engine, 0) == ["motorcycle", "car"]


def _segs(boxes, conf, h=40, w=40):
    m = np.zeros((len(boxes), h, w), bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        m[i, y0:y1, x0:x1] = True
    return Segments(xyxy=boxes, mask=m, confidence=conf, labels=["p"] * len(boxes))


def test_instances_drop_small_background_copies():
    # a big one left of centre, a tiny one far behind, one of similar size right of centre
    seg = _segs([(8, 10, 20, 30), (0, 0, 3, 3), (21, 12, 32, 30)], [0.9, 0.95, 0.8])
    kept = R.instances(seg)
    assert len(kept) == 2 and (0, 0, 3, 3) not in [tuple(b) for b in kept.xyxy.astype(int)]


def test_instances_prefer_the_centre_of_the_frame():
    """Salience = area x score x centrality: of two people of one size, the one in the middle of the
    frame is the subject, the one at the edge a bystander."""
    seg = _segs([(15, 10, 25, 34), (0, 0, 10, 24)], [0.8, 0.8])
    kept = R.instances(seg)
    assert len(kept) == 1 and tuple(kept.xyxy[0].astype(int)) == (15, 10, 25, 34)
    assert salience(seg)[0] > salience(seg)[1]


def test_check_and_bounded_retry():
    seg = _seg("dog", (0, 0, 10, 10))
    ok, _ = R.check(seg.union(), seg)
    assert ok
    assert not R.check(np.zeros((20, 20), bool), Segments.empty(20, 20))[0]
    assert not R.check(np.ones((20, 20), bool), seg)[0]
    assert not R.check(seg.union(), _seg("dog", (0, 0, 10, 10), conf=0.1))[0]
    vis = [Candidate(phrase="a", evidence=0.9), Candidate(phrase="b", evidence=0.8)]
    nxt = R.retry(Choice(phrases=["a"], attempt=0, status="retry", reason="mask too small"), vis)
    assert nxt.phrases == ["b"] and nxt.status == "pending"
    done = R.retry(Choice(phrases=["b"], attempt=1, status="retry", reason="mask too small"), vis)
    assert done.status == "failed" and "no attempts left" in done.reason


def test_check_relaxed_for_a_source_seen_in_other_frames():
    """The frame-consistency look lowers the detection threshold by consistency_threshold (0.5); the
    check's floors follow it, or it would reject what the look was meant to find."""
    c = AgentSettings()
    faint = _seg("car", (0, 0, 4, 4), conf=0.6 * c.min_segment_score, h=100, w=100)  # 0.0016 of the frame
    assert 0.5 * c.min_mask_area < faint.union().mean() < c.min_mask_area
    ok, why = R.check(faint.union(), faint)
    assert not ok and "too small" in why
    assert R.check(faint.union(), faint, relaxed=True)[0]
    fainter = _seg("car", (0, 0, 4, 4), conf=0.4 * c.min_segment_score, h=100, w=100)
    assert not R.check(fainter.union(), fainter, relaxed=True)[0]
    vis = [Candidate(phrase="a", evidence=0.9), Candidate(phrase="b", evidence=0.8)]
    kept = R.retry(Choice(phrases=["a"], status="retry", relaxed=True), vis)
    assert kept.relaxed and kept.phrases == ["b"]  # a retry in that frame uses the same relaxed grounding


def test_explanations_are_honest():
    text = R.explain(["dog"], {"dog": [0, 1]}, 2, [("Bark", 0.9)], ["cat"], silent=False, failed=False)
    assert text.startswith("The dog (in every frame) is making the sound") and "not visible: cat" in text
    off = R.explain([], {}, 2, [("Siren", 0.8)], ["car"], silent=False, failed=False)
    assert "not visible" in off and "empty" in off
    assert "every segmentation attempt failed" in R.explain([], {}, 2, [], [], silent=False, failed=True)
    assert "silent" in R.explain([], {}, 2, [], [], silent=True, failed=False)
