import numpy as np
import pytest

from avs_agent.tools.ops import nms
from avs_agent.tools.types import Answer, AudioSegment, Clip, Frame, FrameResult, Segments


def _seg(n=3, h=10, w=12):
    mask = np.zeros((n, h, w), bool)
    for i in range(n):
        mask[i, i : i + 2, : 3 + i] = True
    return Segments(
        xyxy=np.arange(n * 4).reshape(n, 4),
        mask=mask,
        confidence=np.linspace(0.2, 0.9, n),
        labels=[f"l{i}" for i in range(n)],
        data={"k": list(range(n))},
    )


def test_segments_filter_and_invariants():
    s = _seg()
    assert len(s) == 3 and s.shape == (10, 12)
    high = s[s.confidence > 0.5]
    assert high.labels == ["l1", "l2"] and high.data["k"] == [1, 2]
    assert s[0].labels == ["l0"]
    assert s.area.tolist() == [6, 8, 10]
    assert s.union().sum() == len(np.unique(np.argwhere(s.mask)[:, 1:], axis=0))
    with pytest.raises(ValueError):
        Segments(xyxy=np.zeros((2, 4)), mask=np.zeros((1, 4, 4), bool), confidence=[1, 1], labels=["a", "b"])
    with pytest.raises(ValueError):
        Segments(
            xyxy=np.zeros((1, 4)),
            mask=np.zeros((1, 4, 4), bool),
            confidence=[1],
            labels=["a"],
            data={"x": [1, 2]},
        )


def test_segments_empty_and_concat():
    e = Segments.empty(5, 6)
    assert len(e) == 0 and e.union().shape == (5, 6) and not e.union().any()
    both = Segments.concat([_seg(2), Segments.empty(10, 12), _seg(1)], 10, 12)
    assert len(both) == 3 and both.data["k"] == [0, 1, 0]
    assert len(Segments.concat([], 3, 3)) == 0


def test_frame_and_clip_checks():
    with pytest.raises(ValueError):
        Frame(0, 0.0, np.zeros((4, 4), np.uint8))
    f = Frame(0, 0.0, np.zeros((4, 5, 3), np.uint8))
    a = AudioSegment(0, 1, np.zeros(16000, np.float32))
    assert f.width == 5 and a.duration_s == 1.0 and a.rms == 0.0
    with pytest.raises(ValueError):
        Clip("x", [f], [], a)


def test_answer_json_shape():
    m = np.zeros((4, 5), bool)
    m[1, 1] = True
    ans = Answer(
        "q",
        "t",
        ["dog"],
        [
            FrameResult(
                index=0, time_s=0.5, labels=["dog"], boxes=[[1, 1, 2, 2]], scores=[0.9], mask_area=0.05
            )
        ],
        [m],
        [],
    )
    d = ans.to_dict(mask_files=["masks/frame_0001.png"])
    assert d["visible"] is True and d["frames"][0]["mask_file"] == "masks/frame_0001.png"
    with pytest.raises(ValueError):
        Answer("q", "t", [], [], [m], [])


def test_nms_keeps_the_best_of_each_overlapping_group_per_class():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], np.float32)
    scores = np.array([0.8, 0.9, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]  # best first; box 0 overlaps box 1 (IoU 0.81)
    assert nms(boxes, scores, 0.9).tolist() == [1, 0, 2]
    assert nms(boxes, scores, 0.5, classes=np.array([0, 1, 0])).tolist() == [1, 0, 2]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []
