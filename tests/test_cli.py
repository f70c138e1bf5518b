"""`avs-agent` end to end on the real dev clips (AVSBench S4 layout) and on bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from tests.conftest import dev_clip_paths, run_cli
from tests.media_factory import write_image, write_video, write_wav
from typer.testing import CliRunner

from avs_agent.apps.cli import app

runner = CliRunner()


def _iou(a, b):
    u = np.logical_or(a, b).sum()
    return 1.0 if u == 0 else np.logical_and(a, b).sum() / u


@pytest.mark.parametrize(
    "name", ["pets_great_pyrenees_178_bark_01", "davis_car_shadow_horn_01", "pets_great_pyrenees_180_bark_01"]
)
def test_ask_masks_the_visible_source(tmp_path, dev_set, name):
    frames, wav, gt_dir = dev_clip_paths(name)
    out = tmp_path / "out"
    res = runner.invoke(app, ["ask", str(frames), "--audio", str(wav), "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["visible"] and data["labels"]
    assert len(data["frames"]) == 5
    ious = []
    for i, fr in enumerate(data["frames"]):
        mask = np.asarray(Image.open(out / fr["mask_file"]))
        assert mask.shape == (224, 224) and set(np.unique(mask)) <= {0, 255}
        assert (out / fr["overlay_file"]).is_file()
        ious.append(_iou(mask > 0, np.asarray(Image.open(gt_dir / f"{name}_{i + 1}.png")) > 127))
        assert set(fr) >= {"index", "time_s", "labels", "boxes", "scores", "mask_file"}
    assert np.mean(ious) >= 0.5
    saved = json.loads((out / "answer.json").read_text())
    assert saved["answer"] == data["answer"] and saved["trace"]
    assert {s["node"] for s in saved["trace"]} >= {
        "load",
        "perceive",
        "propose",
        "verify",
        "segment",
        "check",
        "answer",
    }


@pytest.mark.parametrize(
    "name", ["pets_bombay_182_siren_01", "davis_goat_chainsaw_01", "pets_maine_coon_204_bark_01"]
)
def test_ask_leaves_masks_empty_when_the_source_is_off_screen(tmp_path, dev_set, name):
    frames, wav, _ = dev_clip_paths(name)
    res = runner.invoke(app, ["ask", str(frames), "--audio", str(wav), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "not visible" in res.stdout or "not recognised" in res.stdout
    for i in range(1, 6):
        assert not np.asarray(Image.open(tmp_path / "masks" / f"frame_{i:04d}.png")).any()


def test_ask_on_a_real_video_file(tmp_path, dev_set):
    """A dev clip turned into an mp4 (frames at 1 fps + its wav) behaves like the frame folder."""
    import av

    frames, wav, gt_dir = dev_clip_paths("pets_great_pyrenees_176_bark_01")
    from avs_agent.tools.media import decode_audio

    audio = decode_audio(wav)
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=1)
        vs.width = vs.height = 224
        vs.pix_fmt = "yuv420p"
        as_ = out.add_stream("aac", rate=16000)
        as_.layout = "mono"
        for i in range(5):
            img = np.asarray(
                Image.open(frames / f"pets_great_pyrenees_176_bark_01_{i + 1}.png").convert("RGB")
            )
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            for p in vs.encode(f):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        resampler = av.AudioResampler(format=as_.codec_context.format.name, layout="mono", rate=16000)
        for start in range(0, len(audio), 1024):
            af = av.AudioFrame.from_ndarray(
                audio[None, start : start + 1024].copy(), format="flt", layout="mono"
            )
            af.sample_rate = 16000
            af.pts = start
            for conv in resampler.resample(af):
                for p in as_.encode(conv):
                    out.mux(p)
        for p in as_.encode():
            out.mux(p)
    res = runner.invoke(app, ["ask", str(path), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["labels"] == ["dog"] and len(data["frames"]) == 5


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    corrupt = tmp_path / "broken.mp4"
    corrupt.write_bytes(b"\x00" * 1000)
    cases = [
        ([str(tmp_path / "missing.mp4")], "media not found"),
        ([str(corrupt)], "cannot"),
        ([str(write_video(tmp_path / "mute.mp4", audio_rate=None))], "no audio track"),
        ([str(write_image(tmp_path / "i.png")), "--audio", str(write_wav(tmp_path / "e.wav", 0.0))], "empty"),
        ([str(tmp_path / "x.txt")], "not found"),
        ([str(write_image(tmp_path / "j.png"))], "--audio"),
        (
            [
                str(write_image(tmp_path / "k.png")),
                "--audio",
                str(write_wav(tmp_path / "a.wav", 1.0)),
                "--set",
                "agent.bogus=1",
            ],
            "invalid setting",
        ),
    ]
    (tmp_path / "y.xyz").write_text("x")
    cases.append(([str(tmp_path / "y.xyz")], "unsupported media type"))
    for args, needle in cases:
        res = run_cli("ask", *args)
        assert res.exit_code == 2, (args, res.stderr)
        assert len(res.error_lines) == 1 and needle in res.error_lines[0], (args, res.stderr)


def test_missing_models_dir_is_a_clear_error(tmp_path):
    img, wav = write_image(tmp_path / "i.png"), write_wav(tmp_path / "a.wav", 1.0)
    res = run_cli("ask", str(img), "--audio", str(wav), "--set", f"models_dir={tmp_path}")
    assert res.exit_code == 2 and len(res.error_lines) == 1 and "AVS_AGENT_MODELS_DIR" in res.stderr


def test_help_on_every_command():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    import typer

    commands = list(typer.main.get_command(app).commands)
    assert {"ask", "graph", "config"} <= set(commands)
    for name in commands:
        r = runner.invoke(app, [name, "--help"])
        assert r.exit_code == 0 and "Usage" in r.output and "<bool>" not in r.output, name


def test_graph_prints_mermaid():
    res = runner.invoke(app, ["graph"])
    assert res.exit_code == 0 and "retry" in res.stdout and "graph TD" in res.stdout


def test_config_shows_cli_override():
    res = runner.invoke(app, ["config", "--set", "agent.max_attempts=9"])
    assert json.loads(res.stdout)["agent"]["max_attempts"] == 9


def test_the_graph_runs_from_plain_configuration(dev_set):
    """What a LangGraph server does with langgraph.json: build the run context from JSON (here the
    profile and one override, or nothing at all) and invoke the graph with the media path as input; the
    answer equals `ask`'s."""
    from avs_agent.agent.graph import graph
    from avs_agent.agent.nodes import RunContext
    from avs_agent.agent.run import run_media
    from avs_agent.agent.settings import load_settings

    frames, wav, _ = dev_clip_paths("pets_great_pyrenees_176_bark_01")
    expected, _ = run_media(frames, load_settings(), audio=wav)
    for context in ({"profile": "lite", "overrides": ["agent.max_attempts=3"]}, {}):
        out = graph.invoke(
            {
                "media": str(frames),
                "audio_path": str(wav),
                "question": "what is making the sound?",
                "trace": [],
            },
            context=RunContext(**context),
        )
        answer = out["answer"]
        assert answer.labels == expected.labels == ["dog"]
        assert all((a == b).all() for a, b in zip(answer.masks, expected.masks, strict=True))


def _run_without(modules: list[str], *args):
    """The CLI in a process where ``modules`` cannot be imported (as after a lite-only install)."""
    blocked = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules)
    code = blocked + "from avs_agent.apps.cli import main\nmain()\n"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def test_a_missing_extra_is_named_in_one_line_and_exit_2(tmp_path):
    img, wav = write_image(tmp_path / "i.png"), write_wav(tmp_path / "a.wav", 1.0)
    cases = [
        (["gradio"], ["ui"], "pip install 'avs-agent[ui]'"),
        (["fastapi", "uvicorn"], ["serve"], "pip install 'avs-agent[serve]'"),
        (
            ["langchain_openai"],
            ["ask", str(img), "--audio", str(wav), "--set", "llm.backend=openai"],
            "[llm]",
        ),
        (["langchain_ollama"], ["chat", "--set", "llm.backend=ollama"], "[llm]"),
        (
            ["torch", "transformers"],
            ["ask", str(img), "--audio", str(wav), "--profile", "full"],
            "install.sh full",
        ),
    ]
    for blocked, args, needle in cases:
        proc = _run_without(blocked, *args)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2 and len(lines) <= 2, (args, proc.stderr)
        assert needle in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)


def test_models_lists_the_installed_profile(monkeypatch, models_dir):
    import importlib.util

    res = runner.invoke(app, ["models", "--profile", "lite"])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("profile lite") and "no full-profile" not in res.stdout
    rows = [ln for ln in res.stdout.splitlines() if ln.startswith(("yes", "no"))]
    assert len(rows) == 6 and all(r.startswith("yes") for r in rows), res.stdout
    assert any("tools.grounder.detector" in r and "yolox_nano.onnx" in r for r in rows)
    data = json.loads(runner.invoke(app, ["models", "--profile", "lite", "--json"]).stdout)
    assert data["profile"] == "lite" and all(m["available"] for m in data["models"])
    # without the full profile's packages, `models` shows the lite profile
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a)
    )
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0 and res.stdout.startswith("profile lite"), res.output
    res = runner.invoke(app, ["models", "--profile", "lite", "--set", "models_dir=/nowhere"])
    assert "of 6 not available" in res.stdout and "--profile lite" in res.stdout


def test_usage_errors_are_one_line_and_help_shows_no_types():
    for args, needle in [
        (["ask", "x.mp4", "--fps", "abc"], "--fps"),
        (["ask"], "Missing argument"),
        (["ask", "x.mp4", "--bogus"], "--bogus"),
        (["bogus"], "No such command"),
    ]:
        res = run_cli(*args)
        assert res.exit_code == 2 and len(res.error_lines) == 1, (args, res.stderr)
        assert needle in res.error_lines[0], (args, res.stderr)
    res = runner.invoke(app, ["ask", "--help"])
    assert "--json " in res.output and "<bool>" not in res.output


def test_question_with_the_rules_reasoner_says_it_is_not_read(tmp_path):
    res = run_cli("ask", str(tmp_path / "missing.mp4"), "--question", "what is barking?")
    assert res.exit_code == 2 and "does not read --question" in res.stderr, res.stderr
    assert "does not read" not in run_cli("ask", str(tmp_path / "missing.mp4")).stderr


def test_explanations_count_frames_and_name_the_tag_behind_an_unseen_object():
    from avs_agent.agent.rules import RulesReasoner

    text = RulesReasoner.explain(
        ["dog"],
        {"dog": [3]},
        5,
        [("Bark", 0.9)],
        ["person (from the tag 'Crying, sobbing', evidence 0.38)"],
        False,
        False,
    )
    assert "the dog (in frame 4)" in text.lower() and "frames 4" not in text
    assert "also considered but not visible: person (from the tag 'Crying, sobbing', evidence 0.38)" in text
