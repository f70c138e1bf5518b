"""SAM2 video propagation (full profile) through the real transformers classes, on a tiny random
``Sam2VideoModel`` saved and reloaded from a folder like a real checkpoint.

With random weights nothing can be said about tracking quality; what holds whatever the weights:
the output's shape and dtype, which frames are visited in which direction, and the pivot frame's
result (SAM2 uses a mask prompt as the pivot's output as it is).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "Sam2VideoModel"):
    pytest.skip("transformers has no Sam2Video classes", allow_module_level=True)

from tools.errors import ModelNotFoundError  # noqa: E402
from tools.full import hf  # noqa: E402
from tools.full.sam2_video import Sam2VideoPropagator  # noqa: E402
from tools.protocols import Propagator  # noqa: E402
from tools.types import Frame  # noqa: E402

pytestmark = pytest.mark.full

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
SIZE = 64  # the tiny model's square input, pixels
H, W, T = 48, 64, 4


def build_tiny_sam2_video(folder: Path) -> Path:
    """A random ~1M-parameter ``Sam2VideoModel`` (64 px input) plus its processor's config files.

    Constraints of transformers' implementation: the memory attention's image cross-attention has
    ``kv_in_dim`` fixed at 64, so ``memory_encoder_output_channels`` (mem_dim) must be 64, and object
    pointers are only split correctly when mem_dim < the hidden size, hence hidden size 128.
    """
    from transformers import Sam2VideoConfig, Sam2VideoModel

    folder = Path(folder)
    hidden = 128
    config = Sam2VideoConfig(
        vision_config=dict(
            model_type="sam2_vision_model",
            backbone_config=dict(
                model_type="sam2_hiera_det_model",
                hidden_size=8,
                num_attention_heads=1,
                blocks_per_stage=[1, 2, 1, 1],
                embed_dim_per_stage=[8, 16, 32, 64],
                num_attention_heads_per_stage=[1, 1, 1, 1],
                window_size_per_stage=[2, 2, 2, 2],
                global_attention_blocks=[2],
                image_size=[SIZE, SIZE],
                window_positional_embedding_background_size=[2, 2],
            ),
            backbone_channel_list=[64, 32, 16, 8],
            fpn_hidden_size=hidden,
            backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]],
        ),
        prompt_encoder_config=dict(hidden_size=hidden, image_size=SIZE, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(
            hidden_size=hidden, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=16
        ),
        image_size=SIZE,
        num_maskmem=3,
        memory_attention_hidden_size=hidden,
        memory_attention_num_layers=1,
        memory_attention_num_attention_heads=1,
        memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[4, 4],
        memory_encoder_hidden_size=hidden,
        memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=hidden,
        memory_fuser_embed_dim=hidden,
        memory_fuser_intermediate_dim=64,
        memory_fuser_num_layers=1,
    )
    Sam2VideoModel(config).save_pretrained(folder)
    prep = {
        "size": {"height": SIZE, "width": SIZE},
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
        "rescale_factor": 1 / 255,
        "do_resize": True,
        "do_rescale": True,
        "do_normalize": True,
    }
    if HAS_TORCHVISION:  # pragma: no cover - the CPU install has no torchvision
        from transformers import Sam2ImageProcessor, Sam2VideoProcessor, Sam2VideoVideoProcessor

        Sam2VideoProcessor(
            image_processor=Sam2ImageProcessor(**prep), video_processor=Sam2VideoVideoProcessor(**prep)
        ).save_pretrained(folder)
    else:  # the files save_pretrained writes, by hand (the processor cannot be built without torchvision)
        (folder / "processor_config.json").write_text(
            json.dumps({"processor_class": "Sam2VideoProcessor", "target_size": SIZE, "point_pad_value": -10})
        )
        (folder / "preprocessor_config.json").write_text(
            json.dumps({"image_processor_type": "Sam2ImageProcessor", **prep})
        )
        (folder / "video_preprocessor_config.json").write_text(
            json.dumps({"video_processor_type": "Sam2VideoVideoProcessor", **prep})
        )
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> hf.Location:
    folder = build_tiny_sam2_video(tmp_path_factory.mktemp("sam2_video"))
    return hf.locate("tools.propagator.model", str(folder), None, None)


@pytest.fixture(scope="module")
def propagator(checkpoint: hf.Location) -> Sam2VideoPropagator:
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


def test_last_frame_pivot_and_max_frames(checkpoint: hf.Location, visits: list) -> None:
    limited = Sam2VideoPropagator(checkpoint, {"device": "cpu", "max_frames_to_track": 1})
    out = limited.propagate(clip(), T - 1, two_masks())
    assert out.shape == (T, 2, H, W)
    assert [(f, rev) for f, rev, _ in visits] == [(3, False), (3, True), (2, True)]
    assert not out[:2].any()  # beyond max_frames_to_track


def test_no_objects_does_not_load(tmp_path: Path) -> None:
    missing = hf.locate("tools.propagator.model", str(tmp_path / "absent"), None, None)
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
def test_transformers_processor_required_without_torchvision(checkpoint: hf.Location) -> None:
    strict = Sam2VideoPropagator(checkpoint, {"device": "cpu", "processor": "transformers"})
    with pytest.raises(ImportError, match="[Tt]orchvision"):
        strict.load()
