"""The decision model (agent/decision/) on hand-made evidence, and the matcher's generic-label cover."""

import numpy as np
import pytest

from avs_agent.agent import decision as D
from avs_agent.agent.settings import AgentSettings, DecisionSettings, load_settings
from avs_agent.tools.types import AudioTags, Segments
from avs_agent.tools.wiring import get_toolset

P = DecisionSettings(
    clip_weight=0.5,
    generic_share=0.5,
    w_detector=1.0,
    w_salience=2.0,
    w_support=1.0,
    none_bias=0.1,
    none_offscreen=0.5,
    second_source_ratio=0.8,
    instance_share=0.5,
    detection_floor=0.15,
    rank_audio_power=1.0,
    none_per_clip=False,
)
CFG = AgentSettings(decision=P)
VOCAB = ["dog", "cat", "sheep", "car", "person"]


@pytest.fixture(scope="module")
def matcher(models_dir):
    return get_toolset(load_settings(overrides=[f"models_dir={models_dir}"]).tool_config()).matcher


def _tags(**scores):
    items = sorted(scores.items(), key=lambda kv: -kv[1])
    return AudioTags(
        start_s=0, end_s=1, labels=[k.replace("_", " ") for k, _ in items], scores=[v for _, v in items]
    )


def _seg(label, box, conf=0.9, h=20, w=20):
    m = np.zeros((1, h, w), bool)
    x0, y0, x1, y1 = box
    m[0, y0:y1, x0:x1] = True
    return Segments(xyxy=[box], mask=m, confidence=[conf], labels=[label])


def test_generic_labels_cover_the_objects_under_them(matcher):
    farm = matcher.covers(["Livestock, farm animals, working animals"], VOCAB)[0]
    assert {p for p, _ in farm} >= {"sheep"} and "car" not in {p for p, _ in farm}
    assert matcher.covers(["Bark"], VOCAB) == [[]]  # a specific label covers nothing: it names


def test_a_generic_tag_is_explained_away_by_the_specific_one_under_it(matcher):
    """'Domestic animals, pets' over 'Dog' lends the cat nothing; alone, it lends to the cat."""
    with_dog = D.tag_terms(_tags(**{"Domestic animals, pets": 0.99, "Dog": 0.98}), VOCAB, matcher, CFG)
    assert with_dog["dog"].tag == pytest.approx(0.98) and with_dog["dog"].tag_from == "Dog"
    assert with_dog["cat"].parent == pytest.approx(0.01, abs=1e-6)
    alone = D.tag_terms(_tags(**{"Domestic animals, pets": 0.9}), VOCAB, matcher, CFG)
    assert alone["cat"].parent == pytest.approx(0.9) and alone["cat"].tag == 0.0
    # a farm-animal call tagged generically, with a wrong specific tag elsewhere: the sheep gets the lend
    farm = D.tag_terms(
        _tags(**{"Livestock, farm animals, working animals": 0.8, "Vehicle horn, car horn, honking": 0.5}),
        VOCAB,
        matcher,
        CFG,
    )
    assert farm["sheep"].parent == pytest.approx(0.8) and farm["car"].tag > 0


def test_offscreen_evidence_names_the_tag_whose_source_is_not_in_view(matcher):
    tags = _tags(Dog=0.95, Speech=0.2)
    assert D.offscreen_evidence(tags, {"cat"}, VOCAB, matcher, CFG) == (0.95, "Dog")
    assert D.offscreen_evidence(tags, {"dog", "person"}, VOCAB, matcher, CFG) == (0.0, "")


def _row(found, frame, clip=None, off=(0.0, "", 0.0, ""), p=P):
    return D.build_table([frame], clip or {}, [found], [off], [False], p)[0]


def test_none_is_a_scored_option():
    cat = _seg("cat", (2, 2, 12, 12))
    weak = {"cat": D.AudioTerms(parent=0.05, parent_from="Animal")}
    row = _row({"cat": cat}, weak, off=(0.95, "Dog", 0.95, "Dog"))
    assert row.none_score == pytest.approx(0.1 + 0.5 * 0.95)
    assert row.candidates[0].score < row.none_score and D.choose(row, P) == []
    strong = {"cat": D.AudioTerms(tag=0.9, tag_from="Meow")}
    assert [c.phrase for c in D.choose(_row({"cat": cat}, strong), P)] == ["cat"]


def test_none_per_clip_decides_once_for_the_whole_clip():
    """With none_per_clip, 'none' is weighed against the clip's mean scores: a frame whose candidate is
    below its own none still takes it when the clip's source is visible, and no frame takes one when
    none wins over the clip, however strong one frame's candidate."""
    cat = _seg("cat", (2, 2, 12, 12))
    strong, weak = {"cat": D.AudioTerms(tag=0.2, tag_from="Meow")}, {"cat": D.AudioTerms(tag=0.005)}
    clip = P.model_copy(update={"none_per_clip": True})

    def table(terms, off, p):
        return D.build_table(terms, {}, [{"cat": cat}] * len(terms), off, [False] * len(terms), p)

    quiet = [(0.0, "", 0.0, "")] * 2
    per_frame = table([strong, weak], quiet, P)
    assert [bool(D.choose(r, P)) for r in per_frame] == [True, False] and per_frame[0].clip == ""
    whole = table([strong, weak], quiet, clip)
    assert [r.clip for r in whole] == ["visible"] * 2
    assert [[c.phrase for c in D.choose(r, clip)] for r in whole] == [["cat"], ["cat"]]
    assert "(clip: a visible source beats none over the clip)" in D.describe(whole[1])
    barked = table([strong, weak, weak, weak], [(0.95, "Dog", 0.95, "Dog")] * 4, clip)
    assert barked[0].candidates[0].score > barked[0].none_score  # alone, frame 0 would take the cat
    assert [r.clip for r in barked] == ["offscreen"] * 4 and all(D.choose(r, clip) == [] for r in barked)
    # the crop check still rejects a mask it pushes below the frame's none, not one it raises
    row = whole[1]
    _, ok, _ = D.crop_verdict(row, "cat", 0.0, clip.model_copy(update={"w_crop": 8.0}))
    _, ok_high, _ = D.crop_verdict(row, "cat", 1.0, clip)
    assert not ok and ok_high


def test_a_candidate_needs_audio_evidence_however_salient():
    row = _row({"cat": _seg("cat", (0, 0, 20, 18), conf=1.0)}, {"cat": D.AudioTerms()})
    assert row.candidates == []


def test_salience_and_support_break_close_audio_evidence():
    big, small = _seg("car", (0, 0, 16, 16)), _seg("person", (0, 0, 2, 2))
    terms = {
        "car": D.AudioTerms(tag=0.3, tag_from="Engine"),
        "person": D.AudioTerms(tag=0.35, tag_from="Speech"),
    }
    row = _row({"car": big, "person": small}, terms, p=P.model_copy(update={"second_source_ratio": 2.0}))
    assert [c.phrase for c in D.choose(row, P.model_copy(update={"second_source_ratio": 2.0}))] == ["car"]
    assert row.candidates[0].salience == pytest.approx(0.64)


def test_which_visible_object_leans_on_what_is_seen_whether_one_does_on_the_audio():
    """Speech heard louder than the engine: with audio weighed fully the small rider is the source;
    with rank_audio_power < 1 the scooter filling the frame outranks it, while 'none' is weighed against
    the same scores as before."""
    big, small = _seg("motorcycle", (0, 0, 14, 14)), _seg("person", (14, 0, 17, 6))
    terms = {
        "motorcycle": D.AudioTerms(tag=0.07, tag_from="Idling"),
        "person": D.AudioTerms(tag=0.5, tag_from="Speech"),
    }
    found = {"motorcycle": big, "person": small}
    full = _row(found, terms)
    assert [c.phrase for c in D.choose(full, P)] == ["person"]
    seen = P.model_copy(update={"rank_audio_power": 0.4})
    row = _row(found, terms, p=seen)
    assert [c.phrase for c in D.choose(row, seen)][0] == "motorcycle"
    assert [c.score for c in row.candidates] == sorted(c.score for c in full.candidates)  # same scores
    assert "motorcycle" in D.describe(row).split(";")[0] and "[rank " in D.describe(row)
    # 'none' between the two scores: the scooter ranks first but is below none; the rider is not
    high = seen.model_copy(update={"none_bias": 2.0})
    row = _row(found, terms, p=high)
    assert row.candidates[0].phrase == "motorcycle" and [c.phrase for c in row.above_none] == ["person"]
    assert [c.phrase for c in D.choose(row, high)] == ["person"]


def test_a_close_second_source_unless_it_is_the_same_sound_read_twice():
    a, b = _seg("person", (0, 0, 10, 10)), _seg("car", (10, 10, 20, 20))
    two = {
        "person": D.AudioTerms(tag=0.8, tag_from="Speech"),
        "car": D.AudioTerms(tag=0.75, tag_from="Engine"),
    }
    assert [c.phrase for c in D.choose(_row({"person": a, "car": b}, two), P)] == ["person", "car"]
    same = {
        "person": D.AudioTerms(tag=0.8, tag_from="Engine"),
        "car": D.AudioTerms(tag=0.75, tag_from="Engine"),
    }
    assert len(D.choose(_row({"person": a, "car": b}, same), P)) == 1


def test_the_clip_lends_its_evidence_to_a_quiet_second():
    dog = _seg("dog", (2, 2, 12, 12))
    row = _row({"dog": dog}, {"dog": D.AudioTerms()}, clip={"dog": D.AudioTerms(tag=0.9, tag_from="Bark")})
    assert row.candidates[0].audio == pytest.approx(0.45)
    assert "clip tag:Bark 0.90" in row.candidates[0].sources


def test_detections_below_the_floor_are_not_evidence_and_instances_follow_salience():
    faint = _seg("dog", (0, 0, 10, 10), conf=0.1)
    assert _row({"dog": faint}, {"dog": D.AudioTerms(tag=0.9)}).candidates == []
    m = np.zeros((3, 20, 20), bool)
    m[0, :10, :10] = True  # big
    m[1, 15:17, 15:17] = True  # small copy in the background
    m[2, 10:19, 0:9] = True  # nearly as big
    seg = Segments(
        xyxy=[[0, 0, 10, 10], [15, 15, 17, 17], [0, 10, 9, 19]],
        mask=m,
        confidence=[0.9] * 3,
        labels=["dog"] * 3,
    )
    kept = D.instances(seg, P.model_copy(update={"instance_share": 0.5}))
    assert len(kept) == 2 and kept.area.min() > 0.1


def test_crop_check_can_push_a_candidate_below_none():
    dog = _seg("dog", (2, 2, 12, 12))
    row = _row({"dog": dog}, {"dog": D.AudioTerms(tag=0.3, tag_from="Bark")})
    cand = row.candidates[0]
    low = D.rescore_with_crop(cand, 0.0, P.model_copy(update={"w_crop": 8.0}))
    assert low.score < row.none_score < cand.score and "crop-check 0.00" in low.sources


def _perception(found: list[dict], terms: list[dict], tags=None) -> D.Perception:
    n = len(found)
    tags = tags or [_tags(Speech=0.0)] * n
    return D.Perception(
        frame_tags=tags,
        clip_tags=_tags(Speech=0.0),
        frame_terms=terms,
        clip_terms={},
        found=found,
        vocabulary=VOCAB,
        silent=[False] * n,
        shape=(20, 20),
    )


def test_decide_clip_retries_the_next_candidate_after_a_failed_check(matcher):
    tiny, person = _seg("dog", (0, 0, 1, 1)), _seg("person", (0, 0, 10, 10))
    terms = {
        "dog": D.AudioTerms(tag=0.9, tag_from="Bark"),
        "person": D.AudioTerms(tag=0.3, tag_from="Speech"),
    }
    found = {"dog": tiny, "person": person}
    p = P.model_copy(update={"second_source_ratio": 2.0})
    cfg = CFG.model_copy(update={"min_mask_area": 0.01, "decision": p})  # 1 px of 400 is too small
    decided = D.decide_clip(_perception([found], [terms]), p, cfg, matcher)
    assert decided.accepted == [["person"]] and decided.table[0].candidates[0].phrase == "dog"
    assert (decided.masks((20, 20))[0] == person.mask[0]).all()


def test_crossval_groups_keep_visuals_and_recordings_on_one_side(dev_set):
    from avs_agent.evals.crossval import groups

    g = groups(dev_set / "cases.csv")
    assert len(g) == 40
    # one DAVIS sequence is one group; two sequences sharing a recording (Freesound 15544) are one group
    assert len({g[n] for n in g if n.startswith("davis_libby")}) == 1
    assert g["davis_car_shadow_engine_02"] == g["davis_scooter_black_engine_01"]
    # photos of different pets with different recordings are different groups
    assert g["pets_great_pyrenees_174_bark_01"] != g["pets_great_pyrenees_175_bark_01"]


def test_the_widened_set_pairs_dev_visuals_with_other_recordings(dev_set, tmp_path):
    """evals/augment.py: the dev clips plus new pairings in the S4 layout (symlinks, empty masks for
    off-screen), loadable as a dataset; a visual's new cases never reuse a recording it was heard with;
    grouped by visual, each visual source is one fold."""
    import csv

    import numpy as np
    from PIL import Image

    from avs_agent.evals.augment import build
    from avs_agent.evals.crossval import groups
    from avs_agent.evals.datasets import load_dataset

    new = build(dev_set, tmp_path / "w", per_visual=2, seed=0)
    rows = list(csv.DictReader(open(tmp_path / "w" / "cases.csv")))
    assert len(rows) == 40 + len(new) and {c["kind"] for c in new} == {"matched", "mixed", "offscreen"}
    ds = load_dataset("avsbench-s4", tmp_path / "w", "test")
    assert len(ds.samples) == len(rows)
    for s in ds.samples:
        r = next(x for x in rows if x["name"] == s.labels.name)
        if r["name"].startswith("widened") and r["case_type"] == "offscreen":
            assert not np.asarray(Image.open(s.labels.gt_files[0])).any()
        if r["name"].startswith("widened") and r["case_type"] == "matched":
            assert r["audio_classes"] in {"dog_bark", "engine_idling", "car_horn", "children_playing"}
        if r["name"].startswith("widened") and r["case_type"] == "mixed":  # a written wav, 6 dB under
            assert "+" in r["audio_classes"] and not s.inputs.audio.is_symlink()
    for c in new:
        heard = {x["audio_sources"] for x in rows[:40] if x["visual_source"] == c["visual"]["visual_source"]}
        assert c["audio"]["audio_sources"] not in heard
    g = groups(tmp_path / "w" / "cases.csv", by="visual")
    same = [r["name"] for r in rows if "libby" in r["visual_source"]]
    assert len({g[n] for n in same}) == 1 and len(set(g.values())) < len(rows)


@pytest.mark.slow
def test_crossval_never_draws_the_defaults_and_reports_its_spread_and_ceiling(dev_set, models_dir, tmp_path):
    """evals/crossval.py on the dev set with a few draws and two seeds: the defaults (fitted on these
    clips) are reported but never in a fold's pool; every clip is held out exactly once; the ceiling
    (each clip's best draw) bounds the in-sample and cross-validated numbers; the spread over seeds
    brackets its mean; the markdown holds every row."""
    import json

    from avs_agent.evals.crossval import SPACE, draws, main

    base = DecisionSettings()
    pool = draws(6, 0, base)
    assert len(pool) == 6 and all(p != base for p in pool)
    out = tmp_path / "cv.json"
    main(
        [
            "--root", str(dev_set), "--samples", "6", "--seeds", "2", "--designs", "propagated",
            "--out", str(out), "--set", f"models_dir={models_dir}",
        ]
    )  # fmt: skip
    r = json.loads(out.read_text())
    held = [n for f in r["folds"] for n in f["clips"]]
    assert sorted(held) == sorted(r["per_clip_cross_validated"]) and len(held) == 40
    # a fold's fit is the mean of its best draws (here 5% of 6: the single best one), never the defaults
    assert all(len(f["draws"]) == 1 and 0 <= f["draws"][0] < 6 for f in r["folds"])
    assert r["top_share"] == 0.05 and set(r["fitted"]) == set(SPACE)
    for k in ("j_visible", "offscreen_empty"):
        assert r["ceiling"][k] >= max(r["in_sample"][k], r["cross_validated"][k]) - 1e-9
        mean, lo, hi = r["spread"][k]
        assert lo <= mean <= hi and len(r["seeds"]) == 2
    md = out.with_suffix(".md").read_text()
    for row in ("cross-validated (leave", "2 seeds: mean (min-max)", "in-sample", "defaults", "ceiling"):
        assert row in md


def test_a_fit_is_the_mean_of_the_best_draws_not_the_luckiest_one():
    """evals.crossval.fit: the parameters are the mean of the best share of the draws by the objective
    on the fitting clips (J over visible clips + share of off-screen clips left empty); top=0 is the
    single best draw."""
    from types import SimpleNamespace

    from avs_agent.evals.crossval import SPACE, fit

    data = [SimpleNamespace(case="matched"), SimpleNamespace(case="offscreen")]
    pool = [DecisionSettings(none_bias=b) for b in (0.1, 0.2, 0.3, 0.4)]
    values = np.asarray([[0.5, 1.0], [0.9, 0.0], [0.6, 1.0], [0.7, 1.0]])  # objectives 1.5 0.9 1.6 1.7
    best, chosen = fit(data, values, pool, np.arange(2), top=0.0)
    assert chosen == [3] and best is pool[3]
    mean, chosen = fit(data, values, pool, np.arange(2), top=0.5)
    assert chosen == [3, 2] and mean.none_bias == pytest.approx(0.35)
    assert all(getattr(mean, k) == getattr(pool[0], k) for k in SPACE if k != "none_bias")
    # fitted on the first clip alone, the draw that leaves the off-screen clip full wins
    assert fit(data, values, pool, np.arange(1), top=0.0)[1] == [1]


def _masks(*boxes, h=20, w=20):
    m = np.zeros((len(boxes), h, w), bool)
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        m[k, y0:y1, x0:x1] = True
    return m


def test_one_object_never_carries_two_labels(matcher):
    """A car the grounder also calls a truck on nearly the same pixels: both phrases are heard (two
    audio labels, so both are sources by the rules), yet the answer holds one object, named by the
    phrase the audio supports more, in every frame."""
    car = _seg("car", (2, 2, 14, 14))
    truck = _seg("truck", (2, 3, 14, 14))
    terms = {
        "car": D.AudioTerms(tag=0.8, tag_from="Car"),
        "truck": D.AudioTerms(tag=0.5, tag_from="Truck"),
    }
    p = P.model_copy(update={"second_source_ratio": 0.1})
    cfg = CFG.model_copy(update={"decision": p, "propagate": False})
    perc = _perception([{"car": car, "truck": truck}, {"truck": truck}], [terms, terms])
    decided = D.decide_clip(perc, p, cfg, matcher)
    assert decided.accepted[0] == ["car", "truck"]  # the rules took both ...
    assert [list(o) for o in decided.objects] == [["car"], ["car"]]  # ... the answer one object, one name
    assert (decided.masks((20, 20))[0] == (car.mask[0] | truck.mask[0])).all()
    apart = _perception([{"car": car, "truck": _seg("truck", (15, 15, 20, 20))}], [terms])
    assert list(D.decide_clip(apart, p, cfg, matcher).objects[0]) == [
        "car",
        "truck",
    ]  # two objects: two names


def _linked(found):
    """Instances linked by their position in each frame's list (a stand-in for ByteTrack's ids)."""
    return D.link_tracks(
        found, lambda per: [np.arange(len(s)) if s is not None else np.zeros(0, int) for s in per]
    )


def test_an_object_keeps_its_name_in_a_frame_the_detector_calls_it_otherwise(matcher):
    """A running dog the detector calls 'bird' in one frame (compression noise flips a small object's
    class): linked through the clip by the lite tracker whatever its name, it is found as the dog in
    that frame too (the same instance, ``seen_as`` 'bird'), so the answer holds the dog, under one
    name, in every frame. A person whose track meets a bench's is not renamed: a detector confuses
    classes of one kind (COCO supercategory), not a person and a bench."""
    from avs_agent.tools.lite.tracker import InstanceTracker

    h = w = 40
    dog = [(2, 2, 14, 14), (6, 3, 18, 15), (10, 4, 22, 16), (14, 5, 26, 17)]
    found = [{("bird" if t == 2 else "dog"): _seg("dog", b, 0.8, h, w)} for t, b in enumerate(dog)]
    found[2]["bird"].labels = ["bird"]
    for t, f in enumerate(found):  # a person sitting still, seen as a bench in the last frame
        f["bench" if t == 3 else "person"] = _seg("person", (28, 20, 38, 38), 0.7, h, w)
    linked = D.link_tracks(found, InstanceTracker().tracks)
    assert set(linked[2]) == {"dog", "bird", "person"}
    assert (
        linked[2]["dog"].data["seen_as"] == ["bird"]
        and (linked[2]["dog"].mask == found[2]["bird"].mask).all()
    )
    assert "person" not in linked[3] and all(
        "seen_as" not in s.data for f in linked for p, s in f.items() if p != "dog"
    )
    terms = {
        "dog": D.AudioTerms(tag=0.9, tag_from="Bark"),
        "bird": D.AudioTerms(parent=0.1, parent_from="Animal"),
    }
    perc = _perception(linked, [terms] * 4)
    perc.shape = (h, w)
    cfg = CFG.model_copy(update={"propagate": False, "min_mask_area": 0.0})
    decided = D.decide_clip(perc, P, cfg, matcher)
    assert [list(o) for o in decided.objects] == [["dog"]] * 4


def test_the_instance_salient_over_the_clip_wins_when_tracks_weigh_in():
    """A parked scooter (the same size in every frame) and the moving one that grows as it nears: in
    the first frame the parked one is the more salient, over the clip the moving one is."""
    sizes = [2, 8, 12]
    found = [
        {
            "motorcycle": Segments(
                xyxy=[[0, 0, 5, 5], [10, 10, 10 + s, 10 + s]],
                mask=_masks((0, 0, 5, 5), (10, 10, 10 + s, 10 + s), h=30, w=30),
                confidence=[1.0, 0.9],
                labels=["motorcycle"] * 2,
            )
        }
        for s in sizes
    ]
    linked = _linked(found)
    assert linked[0]["motorcycle"].data["track"] == [0, 1]
    frame_only = P.model_copy(update={"instance_share": 0.9, "instance_track_weight": 0.0})
    over_clip = P.model_copy(update={"instance_share": 0.9, "instance_track_weight": 1.0})
    assert D.kept(linked[0], ["motorcycle"], frame_only)["motorcycle"].xyxy[0, 0] == 0  # the parked one
    assert D.kept(linked[0], ["motorcycle"], over_clip)["motorcycle"].xyxy[0, 0] == 10  # the moving one
    assert D.kept(found[0], ["motorcycle"], over_clip)["motorcycle"].xyxy[0, 0] == 0  # unlinked: the frame


def test_a_frame_where_the_followed_track_is_lost_or_elsewhere_answers_its_own_pick_and_says_so():
    """A dog followed along its track: where the track has no instance (lost) or its instance is not
    among the frame's own kept ones (the track went to another instance), the frame's own pick is
    answered, and ``settle`` names those frames and why (the trace's ``followed`` step reads them);
    where the track agrees with the frame, the followed instance is answered and nothing is named."""

    def dogs(*boxes):
        return Segments(
            xyxy=list(boxes),
            mask=_masks(*boxes, h=30, w=30),
            confidence=[0.9] * len(boxes),
            labels=["dog"] * len(boxes),
        )

    found = [{"dog": dogs((2, 2, 12, 12))}, {"dog": dogs((20, 20, 28, 28))}, {"dog": dogs((14, 2, 28, 16))}]
    followed = [found[0]["dog"], None, dogs((3, 3, 6, 6))]  # lost in frame 1; in frame 2 on a speck
    cfg = CFG.model_copy(update={"hold": True})
    settled = D.settle(
        [D.FrameEvidence([], 0.0, "", 0.0)] * 3, [["dog"]] * 3, found, P, cfg, link=lambda ph, t: followed
    )
    assert settled.pivots == {"dog": 0}
    assert settled.own_pick == [{}, {"dog": "lost"}, {"dog": "elsewhere"}]
    for t in range(3):  # each frame's own dog: the followed one agrees in frame 0
        assert settled.objects[t]["dog"].xyxy.tolist() == found[t]["dog"].xyxy.tolist()
    assert (
        D.settle([D.FrameEvidence([], 0.0, "", 0.0)] * 3, [["dog"]] * 3, found, P, cfg).own_pick == [{}] * 3
    )


def test_the_bytetrack_linker_follows_the_tracks_the_decision_reads():
    """The lite profile's Linker (ByteTrack): linked in verify (``link_tracks`` over its ``tracks``),
    a source is followed along the tracks of its kept instances on the pivot frame, the very instances
    ``on_tracks`` (the cross-validation's path, ``decide_clip``) picks; a linker that links nothing
    leaves the instances as they are."""
    from avs_agent.tools.lite.tracker import InstanceTracker
    from avs_agent.tools.protocols import FrameByFrame

    boxes = [[(2, 2, 12, 12), (30, 30, 44, 44)], [(4, 2, 14, 12), (30, 31, 44, 45)], [(6, 3, 16, 13)]]
    found = [
        {
            "dog": Segments(
                xyxy=b,
                mask=_masks(*b, h=48, w=48),
                confidence=[0.9, 0.5][: len(b)],
                labels=["dog"] * len(b),
            )
        }
        for b in boxes
    ]
    tracker = InstanceTracker()
    linked = D.link_tracks(found, tracker.tracks)
    assert all("track" in f["dog"].data for f in linked)
    for pivot in range(3):
        start = D.kept(linked[pivot], ["dog"], P).get("dog")
        followed = tracker.follow([], [f.get("dog") for f in linked], pivot, start)
        expected = D.on_tracks(linked, "dog", pivot, P)
        assert followed[pivot] is not None  # the pivot's own instances are on their tracks
        assert [None if s is None else s.xyxy.tolist() for s in followed] == [
            None if s is None else s.xyxy.tolist() for s in expected
        ]
    assert D.link_tracks(found, FrameByFrame().tracks) == found
    assert FrameByFrame().follow([], [f.get("dog") for f in found], 0, found[0]["dog"]) is None


def test_a_rider_joins_what_it_rides_under_its_name():
    scooter = _seg("motorcycle", (5, 10, 15, 20))
    rider = _seg("person", (6, 2, 14, 16))  # 43% of its box inside the scooter's
    far = _seg("person", (16, 0, 20, 20))
    found = [{"motorcycle": scooter, "person": Segments.concat([rider, far], 20, 20)}]
    on = P.model_copy(update={"rider_overlap": 0.3})
    joined = D.join_riders([{"motorcycle": scooter}], found, on)[0]
    assert list(joined) == ["motorcycle"] and joined["motorcycle"].labels == ["motorcycle"] * 2
    assert (joined["motorcycle"].union() == (scooter.mask[0] | rider.mask[0])).all()
    # the other way round: an answered rider takes the scooter it sits on
    assert len(D.join_riders([{"person": rider}], found, on)[0]["person"]) == 2
    off = P.model_copy(update={"rider_overlap": 1.01})
    assert len(D.join_riders([{"motorcycle": scooter}], found, off)[0]["motorcycle"]) == 1
    # a rider answered under its own name stays its own object
    both = D.join_riders([{"motorcycle": scooter, "person": rider}], found, on)[0]
    assert len(both["motorcycle"]) == 1 and len(both["person"]) == 1


def test_a_ridden_unit_answered_under_each_part_in_turn_keeps_one_name():
    """A horse's clip-clop and a rider's speech: one frame answers the horse (its rider joins it), the
    next the rider (the horse joins it). The masks are the same unit in both; the answer names it once,
    by the name the audio supports more over the clip."""
    horse, rider = _seg("horse", (5, 10, 15, 20)), _seg("person", (6, 8, 14, 16))
    found = [{"horse": horse, "person": rider}] * 2
    on = P.model_copy(update={"rider_overlap": 0.3})
    joined = D.join_riders([{"horse": horse}, {"person": rider}], found, on)
    assert [list(o) for o in joined] == [["horse"], ["person"]]
    assert joined[0]["horse"].data["found_as"] == ["horse", "person"]

    def row(horse_audio, person_audio):
        cands = [
            D.Candidate(ph, a, 0.9, 0.2, 0.9) for ph, a in (("horse", horse_audio), ("person", person_audio))
        ]
        return D.FrameEvidence(cands, 0.0, "", 0.1)

    named = D.one_name(joined, [row(0.8, 0.3), row(0.6, 0.4)], CFG)
    assert [list(o) for o in named] == [["horse"], ["horse"]]
    assert (named[1]["horse"].union() == joined[1]["person"].union()).all()
    apart = D.one_name([{"horse": horse}, {"person": rider}], [row(0.8, 0.3), row(0.6, 0.4)], CFG)
    assert [list(o) for o in apart] == [["horse"], ["person"]]  # never joined: two objects, two names
    walker = _seg("person", (0, 0, 4, 20))  # beside the horse, answered alone in the second frame
    beside = D.join_riders([{"horse": horse}, {"person": walker}], [found[0], {"person": walker}], on)
    assert [list(o) for o in D.one_name(beside, [row(0.8, 0.3), row(0.6, 0.4)], CFG)] == [
        ["horse"],
        ["person"],
    ]


def test_a_generic_tag_is_explained_away_by_a_narrower_generic_one_under_it(matcher):
    """A meow heard as 'Animal' 0.98, 'Domestic animals, pets' 0.91, 'Dog' 0.62: 'Animal' is explained
    by the pets label under it and lends the sheep in view almost nothing."""
    tags = _tags(**{"Animal": 0.98, "Domestic animals, pets": 0.91, "Dog": 0.62})
    terms = D.tag_terms(tags, VOCAB, matcher, CFG)
    assert terms["sheep"].parent == pytest.approx(0.98 - 0.91, abs=1e-4)
    assert terms["cat"].parent == pytest.approx(0.91 - 0.62, abs=1e-4)
    assert terms["dog"].tag == pytest.approx(0.62)


def test_music_names_no_lite_object(matcher):
    """No COCO class plays music: a music label names nothing in the lite vocabulary -- not a cow
    through 'Cowbell' (under 'Percussion' and under 'Cattle, bovinae'), nor a computer keyboard
    through 'Keyboard (musical)' -- and 'Moo' still names the cow."""
    vocab = ["cow", "keyboard", "bowl", "car", "train", "person"]
    assert {p for p, _ in matcher.covers(["Percussion"], vocab)[0]} <= {"person"}
    assert matcher.sound_sources(["Keyboard (musical)"], vocab) == [[]]
    assert [p for p, _ in matcher.sound_sources(["Moo"], vocab)[0]] == ["cow"]


def test_a_close_call_never_offers_one_object_under_two_names(matcher):
    """The car the grounder also calls a truck is no alternative to it: the close call passes over
    the truck and offers the person, a different object, when it is close enough; one object alone is
    no close call."""
    car, truck, person = (
        _seg("car", (2, 2, 14, 14)),
        _seg("truck", (2, 3, 14, 14)),
        _seg("person", (15, 2, 19, 14)),
    )
    terms = {
        "car": D.AudioTerms(tag=0.8, tag_from="Car"),
        "truck": D.AudioTerms(tag=0.75, tag_from="Truck"),
        "person": D.AudioTerms(tag=0.7, tag_from="Speech"),
    }
    found = [{"car": car, "truck": truck, "person": person}] * 2
    table = D.build_table([terms] * 2, {}, found, [(0.0, "", 0.0, "")] * 2, [False] * 2, P)
    assert [c.phrase for c in table[0].candidates][:2] == ["car", "truck"]  # the truck ranks second
    cfg = CFG.model_copy(update={"ask_margin": 0.8})
    assert D.close_call(table, found, P, cfg) == ("car", "person")
    alone = [{"car": car, "truck": truck}] * 2
    table = D.build_table([terms] * 2, {}, alone, [(0.0, "", 0.0, "")] * 2, [False] * 2, P)
    assert D.close_call(table, alone, P, cfg) is None
    # the same two names on two objects apart are a close call
    apart = [{"car": car, "truck": _seg("truck", (15, 15, 20, 20))}] * 2
    table = D.build_table([terms] * 2, {}, apart, [(0.0, "", 0.0, "")] * 2, [False] * 2, P)
    assert D.close_call(table, apart, P, cfg) == ("car", "truck")


def test_with_none_per_clip_a_source_seen_in_part_of_the_clip_is_not_off_screen_elsewhere(matcher):
    """A dog seen in three of five frames and heard ('Dog' 0.83) in every second: with 'none' weighed
    once for the clip, no second counts the bark as off-screen evidence (the dog is the clip's), so
    the clip's none does not silence it; weighed per frame, the frames that miss it still do."""
    dog = _seg("dog", (2, 2, 14, 14))
    found = [{"dog": dog}] * 3 + [{}] * 2
    tags = [_tags(Dog=0.83)] * 5
    clip = P.model_copy(update={"none_per_clip": True})
    rows = D.offscreen_rows(tags, _tags(Dog=0.83), found, VOCAB, matcher, CFG, clip)
    assert [r[0] for r in rows] == [0.0] * 5 and rows[0][2] == 0.0
    per_frame = D.offscreen_rows(tags, _tags(Dog=0.83), found, VOCAB, matcher, CFG, P)
    assert [r[:2] for r in per_frame] == [(0.0, "")] * 3 + [(0.83, "Dog")] * 2
    # a bark over a cat, no dog in any frame: off screen in every second either way
    cat = [{"cat": _seg("cat", (2, 2, 14, 14))}] * 5
    rows = D.offscreen_rows(tags, _tags(Dog=0.83), cat, VOCAB, matcher, CFG, clip)
    assert [r[:2] for r in rows] == [(0.83, "Dog")] * 5 and rows[0][2:] == (0.83, "Dog")
