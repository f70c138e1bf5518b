"""Full-profile tools on tiny random checkpoints, loaded through the same from_pretrained(path) code as
real ones (built by tests/tiny_models.py). Outputs of random models are meaningless: these tests check
shapes, types, the protocols, the caches and the error paths, not quality."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

pytest.importorskip("transformers")
pytestmark = pytest.mark.full

from tests import tiny_models as tm  # noqa: E402

from avs_agent.tools.errors import ModelNotFoundError  # noqa: E402
from avs_agent.tools.locate import locate  # noqa: E402
from avs_agent.tools.protocols import (  # noqa: E402
    AudioCaptioner,
    AudioTagger,
    AudioTextScorer,
    CropChecker,
    Grounder,
    ImageCaptioner,
)
from avs_agent.tools.types import AudioSegment, Captions, Frame, Segments  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tiny_checkpoints, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tiny_original")
    paths = dict(tiny_checkpoints)
    paths["sam_original"] = tm.build_sam_original(root / "sam_original")
    paths["dino_original"] = tm.build_fake_groundingdino_folder(root / "dino_original")
    return paths


def loc(path, key="test"):
    return locate(key, str(path), None, None)


def frame(h=48, w=64, aspect=None, seed=0):
    rng = np.random.default_rng(seed)
    return Frame(index=0, time_s=0.0, image=rng.integers(0, 255, (h, w, 3), dtype=np.uint8), aspect=aspect)


def audio(seconds=1.0, seed=0):
    rng = np.random.default_rng(seed)
    return AudioSegment(0.0, seconds, (rng.standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32))


def check_segments(seg: Segments, f: Frame, phrases: list[str]) -> None:
    assert isinstance(seg, Segments)
    assert seg.mask.shape[1:] == (f.height, f.width) and seg.mask.dtype == bool
    assert seg.xyxy.shape == (len(seg), 4)
    assert set(seg.labels) <= set(phrases)
    assert {"class", "phrase", "mask_source"} <= set(seg.data)
    assert np.all(seg.xyxy[:, [0, 2]] <= f.width) and np.all(seg.xyxy[:, [1, 3]] <= f.height)
    assert np.all((seg.confidence >= 0) & (seg.confidence <= 1))


# --- Grounded-SAM ----------------------------------------------------------------------------------


@pytest.mark.parametrize("segmenter", ["tools.grounder.segmenter", "sam2"])
def test_grounded_sam_transformers(tiny, segmenter):
    from avs_agent.tools.full.grounded_sam import GroundedSam, union_by_label

    g = GroundedSam(
        loc(tiny["tools.grounder.detector"]),
        loc(tiny[segmenter]),
        box_threshold=0.0,
        text_threshold=0.0,
        top_k=2,
    )
    assert isinstance(g, Grounder)
    f = frame()
    phrases = ["a dog", "electric guitar"]
    seg = g.ground(f, phrases)
    check_segments(seg, f, phrases)
    assert 1 <= len(seg) <= 4  # top-k per phrase
    assert seg.data["mask_source"][0] == ("sam2" if segmenter == "sam2" else "sam")
    merged = union_by_label(seg)
    assert sorted(merged.labels) == sorted(set(seg.labels))
    for lab in merged.labels:
        part = seg[np.asarray([x == lab for x in seg.labels])]
        assert np.array_equal(merged[[merged.labels.index(lab)]].mask[0], part.union())

    # nothing passes a threshold above 1: a normal empty result
    empty = g.ground(f, ["a dog"], box_threshold=1.01)
    assert len(empty) == 0 and empty.mask.shape == (0, f.height, f.width)
    assert len(g.ground(f, [])) == 0


def test_image_embedding_reused_across_phrases_and_retries(tiny):
    from avs_agent.tools.full.grounded_sam import GroundedSam

    g = GroundedSam(
        loc(tiny["tools.grounder.detector"]),
        loc(tiny["tools.grounder.segmenter"]),
        box_threshold=0.0,
        text_threshold=0.0,
    )
    f = frame(seed=3)
    g.ground(f, ["a dog"])
    g.ground(f, ["piano"])  # another phrase: new detection, same embeddings
    g.ground(f, ["a dog"], box_threshold=0.1)  # a retry with a lower threshold: no model call
    g.ground(Frame(1, 1.0, f.image.copy()), ["cat"])  # same pixels, another Frame object
    assert g.stats["embedding_misses"] == 1
    assert g.stats["embedding_hits"] >= 3
    assert g.stats["detection_hits"] == 1 and g.stats["detection_misses"] == 3
    assert g._detector()[2].hits >= 2  # GroundingDINO's backbone features reused for new phrases
    g.ground(frame(seed=4), ["a dog"])
    assert g.stats["embedding_misses"] == 2


@pytest.mark.parametrize("segmenter", ["tools.grounder.segmenter", "sam2"])
def test_prefetch_batches_the_heavy_forwards_with_the_same_results(tiny, segmenter, monkeypatch):
    """A tool server's batch of ground() calls: one detector forward and one image-encoder forward for
    all of them (prefetch), then each call from the caches, giving what the calls give one by one."""
    from avs_agent.tools.full.grounded_sam import GroundedSam

    def make(**options):
        return GroundedSam(
            loc(tiny["tools.grounder.detector"]),
            loc(tiny[segmenter]),
            box_threshold=0.0,
            text_threshold=0.0,
            options=options,
        )

    calls = [
        (frame(seed=11), ["a dog"], None),
        (frame(seed=12), ["piano", "a dog"], None),
        (frame(seed=13), ["cat"], 0.0),
    ]
    alone = [make().ground(*c) for c in calls]

    cpu = make(device="cpu")  # batching is off by default (measured slower on CPU, <= 1.2x on a GPU): no-op
    cpu.prefetch("ground", calls)
    assert cpu.stats["detection_misses"] == cpu.stats["embedding_misses"] == 0

    g = make(batch_forwards=True)
    detector, segmenter_model = g._detector()[0], g._segmenter()[1]
    counts = {"detector": 0, "encoder": 0}

    def counting(name, fn):
        def wrapped(*a, **k):
            counts[name] += 1
            return fn(*a, **k)

        return wrapped

    monkeypatch.setattr(detector, "forward", counting("detector", detector.forward))
    monkeypatch.setattr(
        segmenter_model, "get_image_embeddings", counting("encoder", segmenter_model.get_image_embeddings)
    )
    g.prefetch("ground", calls)
    assert counts == {"detector": 1, "encoder": 1}
    batched = [g.ground(*c) for c in calls]
    assert counts == {"detector": 1, "encoder": 1}  # the calls ran from the caches
    assert g.stats["detection_hits"] == 3 and g.stats["embedding_misses"] == 3
    for a, b in zip(alone, batched, strict=True):
        assert a.labels == b.labels and len(a) >= 1
        np.testing.assert_allclose(a.xyxy, b.xyxy, atol=0.05)
        np.testing.assert_allclose(a.confidence, b.confidence, atol=1e-4)
        assert (a.mask == b.mask).mean() > 0.99
    g.prefetch("detect_all", [(c[0],) for c in calls])  # other methods: nothing to batch, no error


def test_aspect_stretch_maps_back_to_frame(tiny):
    from avs_agent.tools.full.grounded_sam import GroundedSam
    from avs_agent.tools.ops import stretch_to_aspect

    f = frame(h=40, w=40, aspect=16 / 9)
    img, sx = stretch_to_aspect(f)
    assert img.shape == (40, 71, 3) and sx == pytest.approx(71 / 40)
    g = GroundedSam(
        loc(tiny["tools.grounder.detector"]),
        loc(tiny["tools.grounder.segmenter"]),
        box_threshold=0.0,
        text_threshold=0.0,
    )
    seg = g.ground(f, ["dog"])
    check_segments(seg, f, ["dog"])


def test_detect_all_grounds_caption_phrases(tiny):
    from avs_agent.tools.full.grounded_sam import GroundedSam

    asked = []

    def phrases(fr):
        asked.append(fr.index)
        return ["guitar", "man"]

    g = GroundedSam(
        loc(tiny["tools.grounder.detector"]),
        loc(tiny["tools.grounder.segmenter"]),
        box_threshold=0.0,
        text_threshold=0.0,
        phrase_source=phrases,
    )
    seg = g.detect_all(frame())
    assert asked == [0] and set(seg.labels) <= {"guitar", "man"} and len(seg)


def test_original_backend_same_interface(tiny):
    from avs_agent.tools.full.grounded_sam import GroundedSam
    from avs_agent.tools.full.grounded_sam_original import GroundedSamOriginal

    tm.register_tiny_sam_original()
    uninstall, _ = tm.install_fake_groundingdino(tiny["dino_original"] / "_tok")
    try:
        orig = GroundedSamOriginal(
            loc(tiny["dino_original"]),
            loc(tiny["sam_original"]),
            box_threshold=0.0,
            text_threshold=0.0,
            top_k=2,
            options={"sam_type": tm.TINY_SAM_TYPE},
        )
        hf_ = GroundedSam(
            loc(tiny["tools.grounder.detector"]),
            loc(tiny["tools.grounder.segmenter"]),
            box_threshold=0.0,
            text_threshold=0.0,
            top_k=2,
        )
        f = frame(aspect=16 / 9)
        a, b = orig.ground(f, ["a dog", "guitar"]), hf_.ground(f, ["a dog", "guitar"])
        for seg in (a, b):
            check_segments(seg, f, ["a dog", "guitar"])
        assert set(a.data) == set(b.data) and a.mask.shape[1:] == b.mask.shape[1:]
        assert isinstance(orig, Grounder) and a.data["mask_source"][0] == "sam_original"
        orig.ground(f, ["piano"])
        assert orig.stats["embedding_misses"] == 1
        assert len(orig.ground(f, ["a dog"], box_threshold=1.01)) == 0
    finally:
        uninstall()


def test_original_backend_without_groundingdino_is_a_clear_error(tiny, tmp_path):
    import shutil

    from avs_agent.tools.full.grounded_sam_original import GroundedSamOriginal

    dino = shutil.copytree(tiny["dino_original"], tmp_path / "dino")  # not in the process cache yet

    saved = sys.modules.pop("groundingdino", None)
    sys.modules["groundingdino"] = None  # import fails as if not installed
    try:
        g = GroundedSamOriginal(
            loc(dino, "tools.grounder.detector"),
            loc(tiny["sam_original"]),
            options={"sam_type": tm.TINY_SAM_TYPE},
        )
        with pytest.raises(ModelNotFoundError, match="groundingdino"):
            g.ground(frame(), ["dog"])
    finally:
        sys.modules.pop("groundingdino", None)
        if saved is not None:
            sys.modules["groundingdino"] = saved


# --- CLAP ------------------------------------------------------------------------------------------


def test_clap_transformers_scores(tiny):
    from avs_agent.tools.full.clap import ClapScorer, apply_templates

    s = ClapScorer(
        loc(tiny["tools.audio_text_scorer.model"]), templates=["the sound of a {x}", "a {x} is heard"]
    )
    assert isinstance(s, AudioTextScorer)
    a = [audio(1.0), audio(2.5, seed=1)]
    out = s.score(a, ["dog", "guitar", "the sound of rain"])
    assert out.shape == (2, 3) and out.dtype == np.float32
    assert np.allclose(out.sum(axis=1), 1.0, atol=1e-5)
    assert np.allclose(
        out, s.score(a, ["dog", "guitar", "the sound of rain"])
    )  # deterministic (no random crop)
    cos = ClapScorer(loc(tiny["tools.audio_text_scorer.model"]), mode="cosine").score(a, ["dog"])
    assert cos.shape == (2, 1) and np.all((cos >= 0) & (cos <= 1))
    assert s.score([], ["dog"]).shape == (0, 1)
    assert apply_templates(["dog", "the sound of rain"], ["the sound of a {x}"]) == [
        ["the sound of a dog"],
        ["the sound of rain"],
    ]


def test_laion_clap_backend_same_interface(tiny, tmp_path, monkeypatch):
    """laion-clap pins numpy<2 and cannot be installed here: a stand-in module with its API."""
    from avs_agent.tools.full.clap import ClapScorer, LaionClapScorer

    calls = {}

    class FakeModule:
        def __init__(self, enable_fusion=False, amodel="HTSAT-tiny", tmodel="roberta", device=None):
            calls["init"] = (enable_fusion, amodel, tmodel)

        def load_ckpt(self, ckpt=None, verbose=True):
            calls["ckpt"] = ckpt

        def get_text_embedding(self, x, use_tensor=False):
            return np.stack([np.random.default_rng(len(t)).standard_normal(8) for t in x]).astype(np.float32)

        def get_audio_embedding_from_data(self, x, use_tensor=False):
            assert x.ndim == 2 and x.dtype == np.float32
            calls["audio_rate_len"] = x.shape[1]
            return np.random.default_rng(0).standard_normal((len(x), 8)).astype(np.float32)

    monkeypatch.setitem(sys.modules, "laion_clap", types.SimpleNamespace(CLAP_Module=FakeModule))
    ckpt = tmp_path / "630k-audioset-best.pt"
    ckpt.write_bytes(b"x")
    laion = LaionClapScorer(loc(ckpt))
    trans = ClapScorer(loc(tiny["tools.audio_text_scorer.model"]))
    a, texts = [audio(1.0), audio(1.0, seed=2)], ["dog", "car"]
    x, y = laion.score(a, texts), trans.score(a, texts)
    assert x.shape == y.shape == (2, 2) and x.dtype == y.dtype == np.float32
    assert np.allclose(x.sum(1), 1.0, atol=1e-5)
    assert calls["ckpt"] == str(ckpt) and calls["audio_rate_len"] == 48000  # 16 kHz -> 48 kHz
    assert isinstance(laion, AudioTextScorer)


def test_laion_clap_missing_package_is_clear(tmp_path, monkeypatch):
    from avs_agent.tools.full.clap import LaionClapScorer

    monkeypatch.setitem(sys.modules, "laion_clap", None)
    with pytest.raises(ModelNotFoundError, match="laion-clap"):
        LaionClapScorer(loc(tmp_path / "x.pt", "tools.audio_text_scorer.model")).score([audio()], ["dog"])


# --- AST -------------------------------------------------------------------------------------------


def test_ast_tagger_per_second_and_clip(tiny):
    from avs_agent.tools.full.ast_tagger import AstTagger

    t = AstTagger(loc(tiny["tools.audio_tagger.model"]))
    assert isinstance(t, AudioTagger) and len(t.labels) == 527
    clip = audio(3.0)
    per_second, whole = t.tag_clip(clip)
    assert len(per_second) == 3 and [p.start_s for p in per_second] == [0.0, 1.0, 2.0]
    assert len(whole.labels) == 527 and whole.scores == sorted(whole.scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in whole.scores)
    # the tiny model's window is 1 s: the clip's score for a label is the max over its seconds
    best = {
        lab: max(dict(zip(p.labels, p.scores, strict=True))[lab] for p in per_second)
        for lab in whole.labels[:5]
    }
    assert all(abs(best[lab] - s) < 1e-5 for lab, s in zip(whole.labels[:5], whole.scores[:5], strict=True))


# --- captioners ------------------------------------------------------------------------------------


def test_noun_phrases_lemmatised_and_generic_dropped():
    pytest.importorskip("spacy")
    from avs_agent.tools.full.blip_captioner import NounPhraseExtractor

    n = NounPhraseExtractor()
    got = n(
        [
            "a man playing an acoustic guitar in front of a picture",
            "two dogs barking at cars",
            "a close up of a piano",
        ]
    )
    assert got[0] == ["man", "acoustic guitar", "guitar"]
    assert got[1] == ["dog", "car"]
    assert got[2] == ["piano"]
    with pytest.raises(ModelNotFoundError, match="no_such_pipeline"):
        NounPhraseExtractor("no_such_pipeline")(["a dog"])


def test_blip_captioner(tiny):
    from avs_agent.tools.full.blip_captioner import BlipCaptioner

    c = BlipCaptioner(loc(tiny["tools.image_captioner.model"]), options={"max_new_tokens": 5, "num_beams": 1})
    assert isinstance(c, ImageCaptioner)
    caps = c.caption([frame(), frame(seed=1, aspect=16 / 9)])
    assert len(caps) == 2 and all(isinstance(x, Captions) and len(x.texts) == 1 for x in caps)
    c.nouns = lambda texts: [["guitar"] for _ in texts]
    assert c.noun_phrases(frame()) == ["guitar"]


def test_qwen2_audio_captioner_several_prompts(tiny):
    from avs_agent.tools.full.audio_captioner import Qwen2AudioCaptioner

    c = Qwen2AudioCaptioner(loc(tiny["tools.audio_captioner.model"]), options={"max_new_tokens": 4})
    assert isinstance(c, AudioCaptioner) and len(c.prompts) >= 2
    caps = c.caption([audio(1.0), audio(2.0, seed=1)])
    assert len(caps) == 2
    for cap in caps:
        assert len(cap.texts) == len(cap.prompts) == len(c.prompts) and all(
            isinstance(t, str) for t in cap.texts
        )
    one = c.caption([audio(0.5)], prompts=["What is making this sound?"])
    assert one[0].prompts == ["What is making this sound?"] and len(one[0].texts) == 1


# --- CLIP check ------------------------------------------------------------------------------------


def test_square_crop_geometry():
    from avs_agent.tools.full.clip_check import square_crop

    img = np.zeros((40, 60, 3), np.uint8)
    img[10:20, 50:60] = 200
    mask = np.zeros((40, 60), bool)
    mask[10:20, 52:60] = True  # 8 wide, 10 tall, at the right edge
    crop = square_crop(img, mask)
    assert crop.shape == (10, 10, 3)  # side = longer side
    assert (crop[:, :9] == 200).all()  # centred on the box; the part beyond the frame is padded
    assert square_crop(img, np.zeros_like(mask)) is None


def test_clip_check(tiny):
    from avs_agent.tools.full.clip_check import ClipCropChecker

    c = ClipCropChecker(loc(tiny["tools.clip_check.model"]))
    assert isinstance(c, CropChecker)
    f = frame(aspect=16 / 9)
    masks = np.zeros((3, f.height, f.width), bool)
    masks[0, 5:20, 10:30] = True
    masks[2] = True
    p = c.check(f, masks, ["dog", "guitar", "car"])
    assert p.shape == (3, 3) and p.dtype == np.float32
    assert np.allclose(p[[0, 2]].sum(1), 1.0, atol=1e-5) and not p[1].any()


# --- loading errors --------------------------------------------------------------------------------


def test_missing_weights_are_one_clear_error(tmp_path, monkeypatch):
    from avs_agent.tools.full.ast_tagger import AstTagger
    from avs_agent.tools.full.grounded_sam import GroundedSam

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    hub = locate("tools.audio_tagger.model", "someorg/not-downloaded-model", "abc123", tmp_path)
    with pytest.raises(ModelNotFoundError) as err:
        AstTagger(hub).tag([audio()])
    msg = str(err.value)
    assert "\n" not in msg and "tools.audio_tagger.model" in msg and "someorg/not-downloaded-model" in msg
    assert "HF_HUB_OFFLINE" in msg and "hf download someorg/not-downloaded-model --revision abc123" in msg

    missing = locate("tools.grounder.detector", str(tmp_path / "nowhere"), None, tmp_path)
    with pytest.raises(ModelNotFoundError, match="tools.grounder.detector.*nowhere"):
        GroundedSam(missing, missing).ground(frame(), ["dog"])
    assert not hub.available() and not missing.available()
