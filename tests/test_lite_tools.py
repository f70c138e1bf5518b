"""The lite tools on the real small models and real clips in ../shared."""

import numpy as np
import pytest
import supervision as sv
from PIL import Image
from tests.conftest import dev_clip_paths

from avs_agent.agent.settings import load_settings
from avs_agent.tools.errors import ModelNotFoundError
from avs_agent.tools.lite.yamnet import YamnetTagger
from avs_agent.tools.locate import locate
from avs_agent.tools.media import load_clip
from avs_agent.tools.types import AudioSegment
from avs_agent.tools.vocab import COCO80
from avs_agent.tools.wiring import get_toolset


@pytest.fixture(scope="module")
def toolset(models_dir):
    return get_toolset(load_settings(overrides=[f"models_dir={models_dir}"]).tool_config())


def _clip(name):
    frames, wav, gt = dev_clip_paths(name)
    return load_clip(frames, wav), gt


def _gt(gt_dir, name, i):
    return np.asarray(Image.open(gt_dir / f"{name}_{i + 1}.png")) > 127


def test_yamnet_hears_a_dog_bark(toolset, dev_set):
    clip, _ = _clip("pets_great_pyrenees_176_bark_01")
    tags = toolset.tagger.tag([clip.audio, *clip.segments])
    assert len(tags) == 6
    assert "Dog" in tags[0].labels[:5] and tags[0].scores[0] > 0.5
    assert tags[0].scores == sorted(tags[0].scores, reverse=True)


def test_yamnet_pads_short_and_empty_segments(toolset):
    tags = toolset.tagger.tag(
        [AudioSegment(0, 0.1, np.zeros(1600, np.float32)), AudioSegment(0, 0, np.zeros(0, np.float32))]
    )
    assert tags[0].labels[0] == "Silence" and tags[1].labels[0] == "Silence"


def test_yolox_decodes_boxes_on_a_real_photo(toolset, dev_set):
    clip, gt_dir = _clip("pets_great_pyrenees_176_bark_01")
    det = toolset.grounder.detector
    boxes, scores, classes = det.detect(clip.frames[0].image)
    assert COCO80[classes[0]] == "dog" and scores[0] > 0.5
    gt = _gt(gt_dir, "pets_great_pyrenees_176_bark_01", 0)
    ys, xs = np.nonzero(gt)
    x0, y0, x1, y1 = boxes[0]
    assert x0 <= xs.mean() <= x1 and y0 <= ys.mean() <= y1  # the box is on the dog
    assert np.all(boxes[:, 2] >= boxes[:, 0]) and np.all(boxes[:, 3] >= boxes[:, 1])


def test_lite_grounder_masks_the_dog_and_not_a_cat(toolset, dev_set):
    name = "pets_great_pyrenees_176_bark_01"
    clip, gt_dir = _clip(name)
    g = toolset.grounder
    calls = g.model_calls
    dog = g.ground(clip.frames[0], ["dog"])
    assert dog.labels and set(dog.labels) == {"dog"}
    assert sv.mask_iou_batch(dog.union()[None], _gt(gt_dir, name, 0)[None])[0, 0] >= 0.5
    assert len(g.ground(clip.frames[0], ["cat", "car"])) == 0  # an empty result is a normal answer
    assert g.model_calls - calls <= 1  # the frame's model outputs were computed once and reused


def test_lite_grounder_keeps_a_clear_region_under_a_weak_box(toolset, dev_set):
    """Seen at 16:9, YOLOX-nano calls this dog a bear and puts a 'dog' box at 0.13 over it; DeepLab
    paints the dog clearly. A box that weak (grounded below box_threshold, for tracking) must not
    hide the region: before, the dog's only segment was that 0.13 box, below the decision's floor."""
    from dataclasses import replace

    name = "pets_great_pyrenees_180_bark_01"
    clip, gt_dir = _clip(name)
    g = toolset.grounder
    seg = g.ground(replace(clip.frames[0], aspect=16 / 9), ["dog"], box_threshold=0.1)
    sources = seg.data["mask_source"]
    assert any(
        c < g.box_threshold for c, s in zip(seg.confidence, sources, strict=True) if s != "deeplab-region"
    )
    best = int(np.argmax(seg.confidence))
    assert sources[best] == "deeplab-region" and seg.confidence[best] >= 0.5
    assert sv.mask_iou_batch(seg.mask[best][None], _gt(gt_dir, name, 0)[None])[0, 0] >= 0.5


def test_lite_grounder_rejects_yolox_dog_on_a_cat(toolset, dev_set):
    clip, _ = _clip("pets_abyssinian_1_bark_01")  # YOLOX-nano calls this cat a dog; DeepLab does not
    assert len(toolset.grounder.ground(clip.frames[0], ["dog"])) == 0
    assert len(toolset.grounder.ground(clip.frames[0], ["cat"])) == 1


def test_matcher_maps_sounds_to_their_sources(toolset):
    m = toolset.matcher
    out = dict(
        zip(
            ["Bark", "Speech", "Dog", "Animal", "Vehicle horn, car horn, honking", "Meow"],
            m.sound_sources(
                ["Bark", "Speech", "Dog", "Animal", "Vehicle horn, car horn, honking", "Meow"], list(COCO80)
            ),
            strict=True,
        )
    )
    assert out["Bark"][0][0] == "dog" and out["Speech"][0][0] == "person"
    assert [p for p, _ in out["Dog"]] == ["dog"]  # not the cat that also resembles 'Dog'
    assert {p for p, _ in out["Animal"]} == {
        "dog",
        "cat",
    }  # a generic label names what the tags under it name
    assert m.sound_sources(["Animal"], list(COCO80)) == [[]]  # alone, it names no specific object
    assert out["Vehicle horn, car horn, honking"][0][0] == "car" and out["Meow"][0][0] == "cat"
    assert m.match(["puppy", "automobile", "guitar"], list(COCO80))[0][0][0] == "dog"
    assert m.match(["guitar"], list(COCO80)) == [[]]


def test_matcher_lets_a_generic_tag_carry_the_specific_one(toolset):
    m = toolset.matcher
    vehicle, car = m.sound_sources(["Vehicle", "Car"], list(COCO80))
    assert vehicle == car == [("car", 1.0)]  # 'Vehicle' 0.95 + 'Car' 0.15: the car gets the vehicle's score
    # a weak lexical match does not inherit it: a railway wagon is no car
    assert [p for p, _ in m.sound_sources(["Vehicle", "Railroad car, train wagon"], list(COCO80))[0]] == [
        "train"
    ]
    assert [p for p, _ in m.sound_sources(["Animal", "Dog"], list(COCO80))[0]] == ["dog"]  # never the cat


def test_matcher_keeps_a_sound_on_its_kind_of_source(toolset):
    """Word embeddings alone put these on the wrong kind of object; the ontology branch rules it out."""
    m = toolset.matcher
    labels = ["Mouse", "Cricket", "Trumpet", "Song", "Beep, bleep", "Fly, housefly"]
    wrong = ["mouse", "sports ball", "elephant", "bird", "sheep", "airplane"]
    for label, bad, found in zip(labels, wrong, m.sound_sources(labels, list(COCO80)), strict=True):
        assert bad not in [p for p, _ in found], (label, found)
    # and the right kinds still land: animals on animals, people on people, things on things
    keep = m.sound_sources(["Bleat", "Laughter", "Typing", "Train horn"], list(COCO80))
    assert [found[0][0] for found in keep] == ["sheep", "person", "keyboard", "train"]


def test_matcher_does_not_lend_an_object_to_a_whole_sound_family(toolset):
    """A bell is no bicycle and rain is no sink: only the labels that name those objects land on them."""
    m = toolset.matcher
    labels = ["Chime", "Jingle bell", "Church bell", "Rain", "Ocean", "Stream", "Tap"]
    for label, found in zip(labels, m.sound_sources(labels, list(COCO80)), strict=True):
        assert not {"bicycle", "sink"} & {p for p, _ in found}, (label, found)
    named = m.sound_sources(["Bicycle bell", "Water tap, faucet", "Sink (filling or washing)"], list(COCO80))
    assert [found[0][0] for found in named] == ["bicycle", "sink", "sink"]


def test_emergency_vehicles_and_jets_name_their_vehicle(toolset):
    """A siren's vehicle and a jet's aircraft are named by the vehicle's own names, not by 'engine'."""
    labels = ["Police car (siren)", "Ambulance (siren)", "Jet engine"]
    found = toolset.matcher.sound_sources(labels, list(COCO80))
    assert [[p for p, _ in f] for f in found] == [["car"], ["truck"], ["airplane"]]


def test_minilm_numpy_matches_transformers(toolset):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    emb = toolset.matcher.embedder
    folder = emb.folder
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.BertModel.from_pretrained(folder).eval()
    texts = ["a dog barking", "the sound of a car engine idling"]
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    m = batch["attention_mask"][..., None].float()
    ref = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=1).numpy()
    assert np.abs(emb.encode(texts) - ref).max() < 1e-4


def test_missing_weights_name_the_file(tmp_path):
    tagger = YamnetTagger(
        locate("tools.audio_tagger.model", "yamnet/nope.tflite", models_dir=tmp_path, hub=False),
        locate("tools.audio_tagger.class_map", "yamnet/map.csv", models_dir=tmp_path, hub=False),
    )
    with pytest.raises(ModelNotFoundError) as err:
        tagger.tag([AudioSegment(0, 1, np.zeros(16000, np.float32))])
    assert str(err.value) == (
        f"YAMNet weights for tools.audio_tagger.model not found at {tmp_path / 'yamnet/nope.tflite'}; fetch the "
        "lite models with `avs-agent models download` (or set AVS_AGENT_MODELS_DIR to a folder holding them)"
    )


def test_embeddings_are_kept_on_disk_and_equal_the_computed_ones(tmp_path, models_dir):
    """A second process loads the vectors a first one computed (no weights loaded), bit for bit; and a
    text's vector depends on the text alone (asked alone, in another order, or with no store)."""
    from avs_agent.tools.text_matcher import MiniLMEmbedder

    source = locate(
        "tools.text_embedder.model", "sentence-transformers/all-MiniLM-L6-v2", models_dir=models_dir
    )
    texts = ["a dog barking", "Vehicle horn, car horn, honking", "dog"]
    first = MiniLMEmbedder(source, cache_dir=tmp_path)
    computed = first.encode(texts)
    assert first.computed == 3 and len(list(tmp_path.glob("*.npz"))) == 1
    second = MiniLMEmbedder(source, cache_dir=tmp_path)
    assert np.array_equal(second.encode(texts), computed)
    assert second.computed == 0 and "_model" not in vars(second)  # the weights were never read
    alone = MiniLMEmbedder(source, cache_dir=False)
    assert np.array_equal(np.stack([alone.encode([t])[0] for t in reversed(texts)])[::-1], computed)
    assert not list(tmp_path.glob(".tmp-*"))
    second.encode(["a cat meowing", "dog"])  # a new text joins the store beside the others
    assert second.computed == 1
    third = MiniLMEmbedder(source, cache_dir=tmp_path)
    assert np.array_equal(third.encode(["a cat meowing", *texts])[1:], computed) and third.computed == 0


def test_embedding_store_key_follows_the_model_files(tmp_path):
    from avs_agent.tools.text_matcher import MODEL_FILES, EmbeddingStore, model_key

    folder = tmp_path / "model"
    folder.mkdir()
    for name in MODEL_FILES:
        (folder / name).write_text(name)
    key = model_key(folder, tmp_path / "cache")
    assert model_key(folder, tmp_path / "cache") == key and (tmp_path / "cache/file_hashes.json").is_file()
    assert model_key(folder, tmp_path / "cache", "max_length=32") != key
    (folder / "model.safetensors").write_text("other weights")
    assert model_key(folder, tmp_path / "cache") != key
    store = EmbeddingStore(tmp_path / "cache", key)
    store.add({"dog": np.ones(4, np.float32)})
    assert list(store.load()) == ["dog"]
    store.path.write_bytes(store.path.read_bytes()[:100])  # a torn or foreign file counts as empty
    assert store.load() == {}


def test_deeplab_upsample_aligns_corners_and_class_map_is_its_argmax():
    from avs_agent.tools.lite.deeplab import class_map, contenders, upsample

    rng = np.random.default_rng(0)
    grid = rng.standard_normal((33, 33, 21)).astype(np.float32)
    h, w = 120, 213
    # TF's resize_bilinear(align_corners=True), written out
    ys, xs = np.linspace(0, 32, h), np.linspace(0, 32, w)
    y0, x0 = np.minimum(ys.astype(int), 31), np.minimum(xs.astype(int), 31)
    wy, wx = (ys - y0)[:, None], (xs - x0)[None, :]
    g = grid[..., 3].astype(np.float64)
    ref = (g[y0][:, x0] * (1 - wx) + g[y0][:, x0 + 1] * wx) * (1 - wy) + (
        g[y0 + 1][:, x0] * (1 - wx) + g[y0 + 1][:, x0 + 1] * wx
    ) * wy
    up = upsample(grid[..., 3], h, w)
    assert up.shape == (h, w) and up.dtype == np.float32
    for y, x in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:
        assert up[y, x] == pytest.approx(ref[y, x], abs=1e-6)
    step = max(np.abs(np.diff(g, axis=0)).max(), np.abs(np.diff(g, axis=1)).max())
    assert np.abs(up - ref).max() <= step / 32  # sampling positions exact to 1/32 of a grid cell
    # the class map is the arg-max over all classes, also when most classes never contend
    for scores in (grid, np.concatenate([grid[..., :3], grid[..., 3:] - 6.0], -1)):
        full = np.stack([upsample(scores[..., c], h, w) for c in range(21)], -1)
        assert np.array_equal(class_map(scores, h, w), full.argmax(-1))
    assert set(contenders(np.concatenate([grid[..., :3], grid[..., 3:] - 20.0], -1))) <= {0, 1, 2}


def test_grounder_components_are_the_8_connected_parts_largest_first():
    from scipy import ndimage

    from avs_agent.tools.lite.grounder import _components
    from avs_agent.tools.ops import box_from_mask

    rng = np.random.default_rng(1)
    mask = rng.random((60, 90)) > 0.62
    mask[:, 40:44] = False
    mask[4:10, 49:55] = mask[6:12, 1:7] = False
    mask[5:9, 50:54] = mask[7:11, 2:6] = True  # two parts of the same size: the first in raster order first
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    ref = [labels == k for k in range(1, n + 1) if (labels == k).sum() >= 5]
    ref.sort(key=lambda m: (-int(m.sum()), int(np.flatnonzero(m)[0])))
    parts = _components(mask, min_pixels=5)
    assert len(parts) == len(ref) >= 3
    for (part, box, pixels), want in zip(parts, ref, strict=True):
        assert np.array_equal(part, want) and pixels == want.sum()
        assert box.tolist() == box_from_mask(want)
    assert _components(np.zeros((10, 10), bool), 1) == []
