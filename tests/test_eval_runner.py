"""The eval runner and the score/eval/report commands on S4 fixtures, with a fake toolset (no
models): outputs in the dataset's layout, resume after a simulated crash, the official protocol."""

from __future__ import annotations

import json

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from avs_agent.agent.settings import load_settings
from avs_agent.apps import eval_cmd as eval_cli
from avs_agent.evals import datasets as D
from avs_agent.evals import runner as R
from avs_agent.tools.errors import UserError
from avs_agent.tools.types import AudioTags, Segments
from avs_agent.tools.wiring import Toolset
from test_loaders import H, W, make_s4
from test_metrics import port_fmeasure, port_mask_iou


class FakeTagger:
    """Tags by loudness: a 300 Hz tone (clip 0) is a dog, 400 Hz (clip 1) a car horn, 500 Hz a siren."""

    name = "fake-tagger"

    def __init__(self):
        self.calls = 0

    def tag(self, segments):
        self.calls += len(segments)
        out = []
        for s in segments:
            spec = np.abs(np.fft.rfft(s.waveform))
            freq = float(np.argmax(spec)) * 16000 / max(1, len(s.waveform))
            label = "Bark" if freq < 350 else "Vehicle horn" if freq < 450 else "Siren"
            out.append(AudioTags(start_s=s.start_s, end_s=s.end_s, labels=[label], scores=[0.9]))
        return out


class FakeGrounder:
    """Sees a 'dog' at columns 2..10 and a 'car' at columns 3..11 of every frame."""

    name = "fake-grounder"
    OBJECTS = {"dog": (2, 10), "car": (3, 11)}

    def __init__(self):
        self.calls = 0

    def _seg(self, frame, names):
        masks, boxes = [], []
        for n in names:
            x0, x1 = self.OBJECTS[n]
            m = np.zeros((frame.height, frame.width), bool)
            m[4:12, x0:x1] = True
            masks.append(m)
            boxes.append([x0, 4, x1, 12])
        return Segments(
            np.array(boxes, np.float32).reshape(-1, 4),
            np.array(masks).reshape(-1, frame.height, frame.width),
            np.full(len(names), 0.8),
            list(names),
        )

    def ground(self, frame, phrases, box_threshold=None):
        self.calls += 1
        return self._seg(frame, [p for p in phrases if p in self.OBJECTS])

    def detect_all(self, frame):
        self.calls += 1
        return self._seg(frame, list(self.OBJECTS))


class FakeMatcher:
    name = "fake-matcher"
    SOURCES = {"Bark": "dog", "Vehicle horn": "car", "dog barking": "dog", "car horn": "car"}

    def sound_sources(self, labels, vocabulary):
        return [[(self.SOURCES[lab], 0.9)] if self.SOURCES.get(lab) in vocabulary else [] for lab in labels]

    def match(self, phrases, vocabulary):
        return [[(p, 1.0)] if p in vocabulary else [] for p in phrases]


class FakeScorer:
    name = "fake-scorer"

    def __init__(self, tagger, matcher):
        self.tagger, self.matcher = tagger, matcher

    def score(self, audio, texts):
        out = np.zeros((len(audio), len(texts)), np.float32)
        for i, t in enumerate(self.tagger.tag(audio)):
            src = self.matcher.sound_sources(t.labels, texts)[0]
            for obj, s in src:
                out[i, texts.index(obj)] = s
        return out


def fake_toolset() -> Toolset:
    tagger, matcher = FakeTagger(), FakeMatcher()
    return Toolset(
        tagger=tagger,
        grounder=FakeGrounder(),
        scorer=FakeScorer(tagger, matcher),
        matcher=matcher,
        vocabulary=["dog", "car", "person"],
        closed_vocabulary=True,
    )


@pytest.fixture
def s4(tmp_path):
    return make_s4(tmp_path / "s4")


@pytest.fixture
def settings():
    return load_settings("lite")


def test_run_writes_layout_scores_and_summary(s4, settings, tmp_path):
    out = tmp_path / "run"
    summary = R.run_eval(
        "avsbench-s4",
        s4,
        "test",
        "segment-all",
        out,
        settings,
        toolset=fake_toolset(),
        cache_dir=None,
        progress=False,
    )
    for i in range(1, 6):
        png = out / "masks" / "dog_barking" / "vid_a" / f"vid_a_{i}.png"
        assert png.is_file()
        assert set(np.unique(np.asarray(__import__("PIL.Image").Image.open(png)))) <= {0, 255}
    rows = R.read_jsonl(out / "clips.jsonl")
    assert [r["key"] for r in rows] == ["dog_barking/vid_a", "car_horn/vid_b", "siren/vid_c"]
    # the fake dog box is exactly vid_a's truth
    assert rows[0]["J"] == pytest.approx(1.0, abs=1e-6) and rows[0]["labels"] == ["dog"]
    assert rows[2]["pred_empty"] and rows[2]["gt_empty"]
    assert summary["offscreen_empty"] == 1.0 and summary["n_visible"] == 2
    assert len(R.read_jsonl(out / "traces.jsonl")) == 3
    cfg = json.loads((out / "config.json").read_text())
    assert (
        cfg["strategy"] == "segment-all"
        and cfg["settings"]["profile"] == "lite"
        and cfg["settings_fingerprint"]
    )
    assert "| J |" in (out / "summary.md").read_text()
    assert json.loads((out / "summary.json").read_text())["J"] == pytest.approx(summary["J"])


def test_existing_run_needs_resume_and_same_config(s4, settings, tmp_path):
    out = tmp_path / "run"
    R.run_eval(
        "avsbench-s4",
        s4,
        "test",
        "segment-all",
        out,
        settings,
        toolset=fake_toolset(),
        cache_dir=None,
        progress=False,
        limit=1,
    )
    with pytest.raises(R.RunError, match="--resume"):
        R.run_eval(
            "avsbench-s4",
            s4,
            "test",
            "segment-all",
            out,
            settings,
            toolset=fake_toolset(),
            cache_dir=None,
            progress=False,
            limit=1,
        )
    with pytest.raises(R.RunError, match="strategy"):
        R.run_eval(
            "avsbench-s4",
            s4,
            "test",
            "audio-cls",
            out,
            settings,
            toolset=fake_toolset(),
            cache_dir=None,
            progress=False,
            limit=1,
            resume=True,
        )
    # changed decision parameters are another run: a resume never mixes the two
    changed = settings.model_copy(
        update={
            "agent": settings.agent.model_copy(
                update={"decision": settings.agent.decision.model_copy(update={"none_bias": 0.9})}
            )
        }
    )
    with pytest.raises(R.RunError, match="agent"):
        R.run_eval(
            "avsbench-s4",
            s4,
            "test",
            "segment-all",
            out,
            changed,
            toolset=fake_toolset(),
            cache_dir=None,
            progress=False,
            limit=1,
            resume=True,
        )


def test_unreadable_dataset_leaves_no_run_behind(s4, settings, tmp_path):
    """A mistyped --root fails before the run folder is written, so the corrected command starts afresh
    (instead of being told the folder already holds a run)."""
    out = tmp_path / "run"
    with pytest.raises(UserError, match="not found"):
        R.run_eval(
            "avsbench-s4",
            tmp_path / "typo",
            "test",
            "segment-all",
            out,
            settings,
            cache_dir=None,
            progress=False,
        )
    assert not (out / "config.json").exists()
    summary = R.run_eval(
        "avsbench-s4",
        s4,
        "test",
        "segment-all",
        out,
        settings,
        toolset=fake_toolset(),
        cache_dir=None,
        progress=False,
        limit=1,
    )
    assert summary["n_clips"] == 1


def test_resume_after_crash_gives_same_result(s4, settings, tmp_path, monkeypatch):
    full = R.run_eval(
        "avsbench-s4",
        s4,
        "test",
        "audio-cls",
        tmp_path / "full",
        settings,
        toolset=fake_toolset(),
        cache_dir=None,
        progress=False,
    )

    out = tmp_path / "crashed"
    real = R.solve_sample
    calls = {"n": 0}

    def crash_on_third(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the process is killed while solving clip 3
        return real(*a, **kw)

    monkeypatch.setattr(R, "solve_sample", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        R.run_eval(
            "avsbench-s4",
            s4,
            "test",
            "audio-cls",
            out,
            settings,
            toolset=fake_toolset(),
            cache_dir=None,
            progress=False,
        )
    assert len(R.read_jsonl(out / "clips.jsonl")) == 2
    # a kill in the middle of writing a line leaves a torn line behind
    with open(out / "clips.jsonl", "a") as f:
        f.write('{"key": "siren/vid_c", "J": 0.')
    monkeypatch.setattr(R, "solve_sample", real)
    counting = fake_toolset()
    resumed = R.run_eval(
        "avsbench-s4",
        s4,
        "test",
        "audio-cls",
        out,
        settings,
        toolset=counting,
        cache_dir=None,
        progress=False,
        resume=True,
    )
    assert counting.tagger.calls == 6  # only the unfinished clip ran (5 seconds + the whole clip)
    keys = [r["key"] for r in R.read_jsonl(out / "clips.jsonl")]
    assert keys == ["dog_barking/vid_a", "car_horn/vid_b", "siren/vid_c"]
    drop = ("run", "seconds_per_clip")
    assert {k: v for k, v in resumed.items() if k not in drop} == {
        k: v for k, v in full.items() if k not in drop
    }


def test_rescore_from_masks_matches_run(s4, settings, tmp_path):
    out = tmp_path / "run"
    first = R.run_eval(
        "avsbench-s4",
        s4,
        "test",
        "segment-all",
        out,
        settings,
        toolset=fake_toolset(),
        cache_dir=None,
        progress=False,
    )
    again = R.rescore(out)
    assert again["J"] == pytest.approx(first["J"], abs=1e-12) and again["F"] == pytest.approx(
        first["F"], abs=1e-12
    )


def _app() -> typer.Typer:
    app = typer.Typer()
    eval_cli.register(app)
    return app


def test_score_command_agrees_with_official_port(s4, tmp_path):
    """`score` on arbitrary masks (empty ones included) equals the ported official protocol."""
    ds = D.load_dataset("avsbench-s4", s4, "test")
    rng = np.random.default_rng(0)
    pred_root = tmp_path / "pred"
    js, fs = [], []
    for k, sample in enumerate(ds):
        masks = [rng.random((H, W)) < 0.4 if (k + i) % 3 else np.zeros((H, W), bool) for i in range(5)]
        D.write_prediction(ds, sample, pred_root, masks)
        pred = np.stack(masks).astype(np.float32)
        gt = sample.labels.masks().astype(np.uint8)
        js.append(port_mask_iou(pred, gt))
        fs.append(port_fmeasure(pred, gt))
    res = CliRunner().invoke(
        _app(), ["score", str(pred_root), "--dataset", "avsbench-s4", "--root", str(s4), "--json"]
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["J"] == pytest.approx(np.mean(js), abs=1e-6)
    assert data["F"] == pytest.approx(np.mean(fs), abs=1e-6)
    assert data["n_clips"] == 3


def test_score_accepts_official_zero_based_names(s4, tmp_path):
    ds = D.load_dataset("avsbench-s4", s4, "test")
    for sample in ds:
        for i, m in enumerate(sample.labels.masks()):
            p = (
                tmp_path
                / "pred"
                / sample.labels.category
                / sample.labels.name
                / f"{sample.labels.name}_{i}.png"
            )
            p.parent.mkdir(parents=True, exist_ok=True)
            __import__("PIL.Image").Image.fromarray(m.astype(np.uint8)).convert("P").save(p)
    res = CliRunner().invoke(
        _app(), ["score", str(tmp_path / "pred"), "--dataset", "avsbench-s4", "--root", str(s4), "--json"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["J"] == pytest.approx(1.0, abs=1e-6)


def test_cli_user_errors(s4, tmp_path):
    app = _app()
    res = CliRunner().invoke(
        app, ["score", str(tmp_path / "nothing"), "--dataset", "avsbench-s4", "--root", str(s4)]
    )
    assert isinstance(res.exception, UserError) and "nothing" in str(res.exception)
    res = CliRunner().invoke(app, ["score", str(tmp_path), "--dataset", "bogus", "--root", str(s4)])
    assert isinstance(res.exception, UserError) and "bogus" in str(res.exception)
    res = CliRunner().invoke(
        app,
        [
            "eval",
            "--dataset",
            "avsbench-s4",
            "--root",
            str(s4),
            "--strategy",
            "nope",
            "--out",
            str(tmp_path / "r"),
        ],
    )
    assert isinstance(res.exception, UserError) and "nope" in str(res.exception)
    # missing predictions: an error naming the file, or skipped and counted
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(
        app, ["score", str(tmp_path / "empty"), "--dataset", "avsbench-s4", "--root", str(s4)]
    )
    assert isinstance(res.exception, UserError) and "vid_a_1.png" in str(res.exception)
    res = CliRunner().invoke(
        app,
        [
            "score",
            str(tmp_path / "empty"),
            "--dataset",
            "avsbench-s4",
            "--root",
            str(s4),
            "--on-missing",
            "skip",
            "--json",
        ],
    )
    assert res.exit_code == 0 and len(json.loads(res.output)["skipped"]) == 3


def test_report_compares_runs(s4, settings, tmp_path):
    pytest.importorskip("matplotlib")
    runs = []
    for strat in ("segment-all", "audio-cls"):
        R.run_eval(
            "avsbench-s4",
            s4,
            "test",
            strat,
            tmp_path / strat,
            settings,
            toolset=fake_toolset(),
            cache_dir=None,
            progress=False,
        )
        runs.append(str(tmp_path / strat))
    res = CliRunner().invoke(_app(), ["report", *runs, "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "segment-all (rules)" in md and "audio-cls (rules)" in md and "dog_barking" in md
    assert (tmp_path / "rep" / "report.png").stat().st_size > 1000
    assert (tmp_path / "rep" / "grid_segment-all.png").is_file()
