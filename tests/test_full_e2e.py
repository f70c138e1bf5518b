"""`avs-agent ask --profile full` end to end with every model pointed (--set) at tiny random checkpoints
made outside the project, and `avs-agent models` over them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("transformers")
pytestmark = pytest.mark.full

from tests import tiny_models as tm  # noqa: E402
from tests.media_factory import write_video  # noqa: E402

from avs_agent.apps.cli import app  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_sets(tiny_checkpoints) -> list[str]:
    return [f"--set={pair}" for pair in tm.set_overrides(tiny_checkpoints)]


def test_models_command_lists_tiny_checkpoints(tiny_sets):
    res = runner.invoke(app, ["models", "--profile", "full", "--json", *tiny_sets])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    keys = {m["key"]: m for m in data["models"]}
    for key in (
        "tools.grounder.detector",
        "tools.grounder.segmenter",
        "tools.audio_tagger.model",
        "tools.audio_text_scorer.model",
        "tools.image_captioner.model",
        "tools.audio_captioner.model",
        "tools.clip_check.model",
    ):
        assert keys[key]["available"] and keys[key]["local"], key
    res = runner.invoke(app, ["models", "--profile", "full"])
    assert res.exit_code == 0 and "GroundingDinoForObjectDetection" in res.stdout


def test_ask_full_profile_end_to_end(tmp_path, tiny_sets):
    video = write_video(tmp_path / "clip.mp4", seconds=2.0, size=(64, 48))
    out = tmp_path / "out"
    res = runner.invoke(
        app,
        [
            "ask",
            str(video),
            "--profile",
            "full",
            "--out",
            str(out),
            "--json",
            *tiny_sets,
            "--set=tools.grounder.box_threshold=0.0",
            "--set=agent.decision.detection_floor=0.0",
            "--set=tools.audio_captioner.options.max_new_tokens=4",
            "--set=tools.image_captioner.options.max_new_tokens=4",
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    answer = json.loads((out / "answer.json").read_text())
    assert answer["answer"] == data["answer"] and isinstance(answer["answer"], str)
    assert len(data["frames"]) == 2
    # the tiny AST makes 'Dog' win; with box threshold 0 the tiny GroundingDINO always finds boxes
    assert "dog" in data["labels"] and data["visible"]
    for fr in data["frames"]:
        mask = np.asarray(Image.open(out / fr["mask_file"]))
        assert mask.shape == (48, 64) and set(np.unique(mask)) <= {0, 255}
        assert 0.0 <= fr["mask_area"] <= 1.0
    nodes = {step["node"] for step in data["trace"]}
    assert {"perceive", "propose", "verify", "segment", "answer"} <= nodes
    # every tool of the profile feeds a decision: CLAP in the evidence table, the crop check in the check
    verify = [s["message"] for s in data["trace"] if s["event"] == "evidence"]
    assert verify and all("clap" in m for m in verify)  # the evidence's words name the term
    # every mask that passed the area check got the crop check's verdict (a mask too small for it
    # or too big fails before the crop check runs)
    checks = [c for s in data["trace"] if s["event"].startswith("check_") for c in s["data"]["checks"]]
    assert any(c["crop"] is not None for c in checks), checks
    assert all(c["crop"] is not None for c in checks if c["reason"] in ("ok", "crop_below_none")), checks
    assert any(s["event"] == "image_caption" for s in data["trace"])
    # the accepted source is carried through the clip by SAM2's video predictor (the tiny checkpoint)
    followed = [s for s in data["trace"] if s["event"] == "followed"]
    assert followed and all(s["data"]["linker"] == "sam2-video" for s in followed), followed


def test_ask_full_profile_missing_weights_is_one_line(tmp_path):
    from avs_agent.apps.cli import main  # noqa: F401 - main prints UserErrors as one line

    video = write_video(tmp_path / "clip.mp4", seconds=1.0, size=(64, 48))
    res = runner.invoke(
        app,
        [
            "ask",
            str(video),
            "--profile",
            "full",
            f"--set=tools.audio_tagger.model.source={tmp_path / 'missing'}",
        ],
    )
    assert res.exit_code != 0
    from avs_agent.tools.errors import ModelNotFoundError

    assert isinstance(res.exception, ModelNotFoundError)
    assert "tools.audio_tagger.model" in str(res.exception) and "\n" not in str(res.exception)


def test_a_full_tool_server_warms_every_tool(tiny_sets):
    """`avs-agent serve --profile full` loads each tool through its own ``warm_up`` (no list of tool
    names in the server); the toolset follows sources with SAM2 (its linker)."""
    from avs_agent.agent.settings import load_settings
    from avs_agent.tools.protocols import Linker
    from avs_agent.tools.server.app import LocalDispatcher
    from avs_agent.tools.types import Frame

    overrides = [s.removeprefix("--set=") for s in tiny_sets]
    overrides += [
        "tools.audio_captioner.options.max_new_tokens=4",
        "tools.image_captioner.options.max_new_tokens=4",
    ]
    config = load_settings("full", overrides=overrides).tool_config()
    disp = LocalDispatcher.from_settings(config)
    disp.load()
    assert disp.ready and set(disp.tools) == {
        "tagger",
        "grounder",
        "scorer",
        "matcher",
        "audio_captioner",
        "image_captioner",
        "crop_checker",
    }
    linker = disp.toolset.linker
    assert isinstance(linker, Linker) and linker.name == "sam2-video" and linker.tracks([None]) is None
    # GroundingDINO takes any phrase: it proposes nothing itself and reads phrases as they are
    grounder = disp.toolset.grounder
    assert grounder.proposals(Frame.blank(48, 64)) == [] and grounder.words(["a dog", "a dog"]) == ["a dog"]
