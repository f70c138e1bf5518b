"""SAM2 video propagation (full profile) through the real transformers classes, on a tiny random
``Sam2VideoModel`` saved and reloaded from a folder like a real checkpoint.

With random weights nothing can be said about tracking quality; what holds whatever the weights:
the output's shape and dtype, which frames are visited in which direction, and the pivot frame's
result (SAM2 uses a mask prompt as the pivot's output as it is).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "Sam2VideoModel"):
    pytest.skip("transformers has no Sam2Video classes", allow_module_level=True)

from avs_agent.tools.errors import ModelNotFoundError  # noqa: E402
from avs_agent.tools.full.sam2_video import Sam2VideoPropagator  # noqa: E402
from avs_agent.tools.locate import Location, locate  # noqa: E402
from avs_agent.tools.protocols import Propagator  # noqa: E402
from avs_agent.tools.types import Frame  # noqa: E402

pytestmark = pytest.mark.full

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
H, W, T = 48, 64, 4


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoints: dict[str, Path]) -> Location:
    return locate("tools.propagator.model", str(tiny_checkpoints["tools.propagator.model"]), None, None)


@pytest.fixture(scope="module")
def propagator(checkpoint: Location) -> Sam2VideoPropagator:
    return Sam2VideoPropagator(checkpoint, {"device": "cpu"})


def clip(t: int = T) -> list[Frame]:
    rng = np.random.default_rng(0)
    return [
        Frame(index=i, time_s=0.5 * i, image=rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
        for i in range(t)
    ]


def two_masks() -> np.ndarray:
    masks = np.zeros((2, H, W), bool)
    masks[0, 4:28, 4:30] = True  # top left
    masks[1, 20:44, 34:60] = True  # bottom right
    return masks


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


@pytest.fixture
def visits(propagator: Sam2VideoPropagator, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool, list]]:
    """(frame index, reverse, object ids) of every frame the real iterator yields."""
    model = propagator._load().model
    real = model.propagate_in_video_iterator
    seen: list[tuple[int, bool, list]] = []

    def spy(*args, **kwargs):
        for step in real(*args, **kwargs):
            seen.append((int(step.frame_idx), bool(kwargs.get("reverse", False)), list(step.object_ids)))
            yield step

    monkeypatch.setattr(model, "propagate_in_video_iterator", spy)
    return seen


def test_shapes_directions_and_pivot(propagator: Sam2VideoPropagator, visits: list) -> None:
    assert isinstance(propagator, Propagator)
    assert propagator.name == "sam2-video"
    masks = two_masks()
    out = propagator.propagate(clip(), 2, masks)
    assert out.shape == (T, 2, H, W)
    assert out.dtype == bool
    # forward from the pivot to the end, then backward from the pivot to frame 0, both objects
    assert [(f, rev) for f, rev, _ in visits] == [(2, False), (3, False), (2, True), (1, True), (0, True)]
    assert all(ids == [1, 2] for _, _, ids in visits)
    # a mask prompt is the pivot's output as it is (after the 64 px round trip), whatever the weights;
    # object identity is kept (index = object)
    assert iou(out[2, 0], masks[0]) > 0.8
    assert iou(out[2, 1], masks[1]) > 0.8
    assert iou(out[2, 0], masks[1]) < 0.1 and iou(out[2, 1], masks[0]) < 0.1
    assert propagator.uses_transformers_processor is HAS_TORCHVISION
    if not HAS_TORCHVISION:
        assert "torchvision" in propagator.processor_note


def test_empty_pivot_mask_stays_empty(propagator: Sam2VideoPropagator, visits: list) -> None:
    masks = two_masks()
    masks[0] = False
    out = propagator.propagate(clip(3), 0, masks)
    assert out.shape == (3, 2, H, W)
    assert not out[:, 0].any()
    assert iou(out[0, 1], masks[1]) > 0.8
    assert [f for f, rev, _ in visits] == [0, 1, 2]  # pivot 0: no backward pass
    assert all(ids == [2] for _, _, ids in visits)


def test_last_frame_pivot_and_max_frames(checkpoint: Location, visits: list) -> None:
    limited = Sam2VideoPropagator(checkpoint, {"device": "cpu", "max_frames_to_track": 1})
    out = limited.propagate(clip(), T - 1, two_masks())
    assert out.shape == (T, 2, H, W)
    assert [(f, rev) for f, rev, _ in visits] == [(3, False), (3, True), (2, True)]
    assert not out[:2].any()  # beyond max_frames_to_track


def test_no_objects_does_not_load(tmp_path: Path) -> None:
    missing = locate("tools.propagator.model", str(tmp_path / "absent"), None, None)
    prop = Sam2VideoPropagator(missing)
    out = prop.propagate(clip(), 2, np.zeros((0, H, W), bool))
    assert out.shape == (T, 0, H, W) and out.dtype == bool
    out = prop.propagate(clip(), 2, np.zeros((2, H, W), bool))  # objects, but all empty on the pivot
    assert out.shape == (T, 2, H, W) and not out.any()
    assert prop.propagate([], 0, np.zeros((0, H, W), bool)).shape == (0, 0, H, W)
    with pytest.raises(ModelNotFoundError, match="tools.propagator.model"):
        prop.propagate(clip(), 2, two_masks())


def test_bad_input_is_a_value_error(propagator: Sam2VideoPropagator) -> None:
    with pytest.raises(ValueError, match="pivot"):
        propagator.propagate(clip(), T, two_masks())
    with pytest.raises(ValueError, match="masks"):
        propagator.propagate(clip(), 0, np.ones((1, H + 1, W), bool))
    with pytest.raises(ValueError, match="processor"):
        Sam2VideoPropagator(propagator.loc, {"processor": "pil"})


@pytest.mark.skipif(HAS_TORCHVISION, reason="needs an install without torchvision")
def test_transformers_processor_required_without_torchvision(checkpoint: Location) -> None:
    strict = Sam2VideoPropagator(checkpoint, {"device": "cpu", "processor": "transformers"})
    with pytest.raises(ImportError, match="[Tt]orchvision"):
        strict.load()


def test_the_sam2_linker_carries_the_sources_mask(propagator: Sam2VideoPropagator) -> None:
    """The full profile's Linker: it links no detections (``tracks`` is None) and follows a source by
    carrying the union of its kept instances from the pivot frame: one instance per frame under the
    source's name, with its best score."""
    from avs_agent.tools.full.sam2_video import Sam2Linker
    from avs_agent.tools.ops import box_from_mask
    from avs_agent.tools.protocols import Linker
    from avs_agent.tools.types import Segments

    linker = Sam2Linker(propagator)
    assert isinstance(linker, Linker) and linker.name == "sam2-video"
    assert linker.tracks([None] * T) is None
    masks = two_masks()
    start = Segments(
        xyxy=[box_from_mask(m) for m in masks], mask=masks, confidence=[0.4, 0.7], labels=["dog", "dog"]
    )
    followed = linker.follow(clip(), [None] * T, 1, start)
    assert len(followed) == T
    pivot = followed[1]
    assert pivot is not None and pivot.labels == ["dog"] and float(pivot.confidence[0]) == pytest.approx(0.7)
    assert iou(pivot.mask[0], masks.any(axis=0)) > 0.8
    assert all(seg is None or (seg.labels == ["dog"] and seg.mask[0].any()) for seg in followed)
    assert linker.follow(clip(), [None] * T, 1, None) is None  # nothing kept on the pivot: nothing to follow
