"""`avs-agent chat`: the terminal conversation driven through its input, on a real dev clip.

One test types a whole conversation through typer's test runner (in-process, so the lite models load
once); one drives the real command in a pseudo-terminal (pexpect) for the commands that need no models.
"""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
from PIL import Image
from tests.conftest import PROJECT_ROOT, dev_clip_paths, run_cli
from tests.media_factory import write_image
from typer.testing import CliRunner

from avs_agent.apps.chat_cmd import ChatSession, describe_reply
from avs_agent.apps.cli import app

runner = CliRunner()
CLIP = "pets_great_pyrenees_176_bark_01"  # a barking dog, visible on all 5 frames


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    u = np.logical_or(a, b).sum()
    return 1.0 if u == 0 else float(np.logical_and(a, b).sum() / u)


def _thread_id(output: str) -> str:
    m = re.search(r"chat --thread (\w+)", output)
    assert m, output
    return m.group(1)


def test_chat_conversation_with_follow_ups_and_resume(tmp_path, dev_set):
    frames, wav, gt_dir = dev_clip_paths(CLIP)
    out = tmp_path / "answers"
    typed = "\n".join(
        [
            "/help",
            f"/open '{frames}' '{wav}'",
            "what is making the sound?",
            "which seconds?",
            "why not the man?",
            "/trace",
            "/bogus",
            "/quit",
        ]
    )
    res = runner.invoke(app, ["chat", "--out", str(out)], input=typed + "\n")
    assert res.exit_code == 0, res.output
    text = res.stdout
    thread = _thread_id(text)
    assert "/open PATH [AUDIO]" in text  # /help
    assert f"Opened {frames}" in text
    assert "The dog (in every frame) is making the sound" in text
    # where the masks and overlays went, and that they are right
    overlays = out / thread / "turn_001" / "overlays"
    masks = out / thread / "turn_001" / "masks"
    assert f"overlays: {overlays}/ (5 PNG" in text and f"masks:    {masks}/" in text
    assert sorted(p.name for p in overlays.iterdir()) == [f"frame_{i:04d}.png" for i in range(1, 6)]
    ious = [
        _iou(
            np.asarray(Image.open(masks / f"frame_{i:04d}.png")) > 0,
            np.asarray(Image.open(gt_dir / f"{CLIP}_{i}.png")) > 127,
        )
        for i in range(1, 6)
    ]
    assert np.mean(ious) >= 0.5, ious
    # follow-ups answered from the stored analysis (no new turn folder)
    assert "Found the dog in frames 1-5 (seconds 0-5)." in text
    assert "no man is visible" in text
    assert not (out / thread / "turn_002").exists()
    # /trace lists the decisions; an unknown command is named
    assert re.search(r"propose\s+\[clip\]|propose\s+\[frame 1\]", text) and "verify" in text
    assert "unknown command /bogus" in text
    assert f"Bye. Resume with: avs-agent chat --thread {thread}" in text

    # resume the same thread in a new process-level session: the media and the analysis are still there
    res = runner.invoke(
        app,
        ["chat", "--thread", thread, "--out", str(out)],
        input="which seconds?\nsegment the person instead\n",
    )
    assert res.exit_code == 0, res.output
    assert f"Resuming conversation {thread}" in res.stdout
    assert f"Media: {frames}" in res.stdout
    assert "Found the dog in frames 1-5 (seconds 0-5)." in res.stdout
    assert "I could not find a person in the frames" in res.stdout  # re-segmentation, honest
    assert (out / thread / "turn_002" / "masks").is_dir()


def test_chat_media_argument_errors_are_one_line(tmp_path):
    cases = [
        (["chat", str(tmp_path / "missing.mp4")], "media not found"),
        (["chat", "--audio", str(tmp_path / "a.wav")], "--audio needs MEDIA"),
    ]
    for args, needle in cases:
        res = run_cli(*args, input="/quit\n")
        assert res.exit_code == 2 and len(res.error_lines) == 1 and needle in res.error_lines[0], res.stderr


def test_chat_session_without_media_and_bad_opens(tmp_path):
    """No model is needed to refuse: questions before /open, a text file, an image without audio."""
    from avs_agent.agent.settings import load_settings

    lines: list[str] = []
    session = ChatSession(load_settings(), None, tmp_path, echo=lines.append)
    session.greet(resumed=False)
    assert "Open a video with /open PATH" in lines[-1]
    session.handle("what is making the sound?")
    assert lines[-1].startswith("Open a video first")
    (tmp_path / "notes.txt").write_text("hello")
    session.handle(f"/open {tmp_path / 'notes.txt'}")
    assert lines[-1].startswith("error: unsupported media type '.txt'")
    session.handle(f"/open {write_image(tmp_path / 'still.png')}")
    assert lines[-1].startswith("error:") and "--audio" in lines[-1]
    session.handle("/open")
    assert lines[-1] == "usage: /open PATH [AUDIO]"
    session.handle("/open 'unclosed")
    assert lines[-1].startswith("error: cannot read that command")
    first = session.conv.thread_id
    session.handle("/new")
    assert session.conv.thread_id != first and lines[-1] == f"New conversation {session.conv.thread_id}."
    session.handle("/trace")
    assert lines[-1].startswith("No analysis yet")
    assert session.handle("/quit") is False


def test_describe_reply_says_where_files_are():
    from avs_agent.apps.conversation import Reply

    reply = Reply(
        text="The dog.",
        labels=["dog"],
        overlays=["/o/t/overlays/frame_0001.png"],
        masks=["/o/t/masks/frame_0001.png"],
        out_dir="/o/t",
    )
    assert describe_reply(reply) == [
        "The dog.",
        "  overlays: /o/t/overlays/ (1 PNG, frame with the mask tinted and the object named)",
        "  masks:    /o/t/masks/ (0/255 PNG per frame)",
        "  answer:   /o/t/answer.json",
    ]
    assert describe_reply(reply.model_copy(update={"kind": "followup"})) == ["The dog."]


def test_chat_in_a_real_terminal(tmp_path, monkeypatch):
    """The installed command in a pseudo-terminal: prompt, /help, a bad /open, Ctrl-D."""
    pexpect = pytest.importorskip("pexpect")
    cmd = f"{sys.executable} -c 'from avs_agent.apps.cli import main; main()'"
    (tmp_path / "notes.txt").write_text("not a video")
    child = pexpect.spawn(
        cmd + " chat", cwd=str(PROJECT_ROOT), encoding="utf-8", timeout=60, dimensions=(40, 200)
    )
    try:
        child.expect(r"chat --thread (\w+)")
        child.expect_exact("you> ")
        child.sendline("/help")
        child.expect_exact("segment the car instead")
        child.expect_exact("you> ")
        child.sendline(f"/open {tmp_path / 'notes.txt'}")
        child.expect_exact("error: unsupported media type '.txt'")
        child.expect_exact("you> ")
        child.sendline("what is making the sound?")
        child.expect_exact("Open a video first")
        child.expect_exact("you> ")
        child.sendeof()
        child.expect_exact("Bye. Resume with: avs-agent chat --thread")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
