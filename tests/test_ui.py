"""The web page in a real headless browser (Playwright driving Debian's chromium), and `avs-agent ui` itself.

The browser test uploads a dev clip as an mp4 built from its frames and wav, asks "what is making the
sound?", checks that the overlays and the answer appear (and that the mask on disk covers the right
object), then asks a follow-up in the same conversation. A screenshot is saved under the test's tmp dir,
and also under $AVS_UI_SCREENSHOTS when that is set.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.conftest import SHARED, dev_clip_paths, run_cli

gr = pytest.importorskip("gradio")

CHROMIUM = os.environ.get("AVS_UI_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CLIP = "davis_car_shadow_horn_01"  # a car sounding its horn; the car moves across 5 different frames
CLI = [sys.executable, "-c", "from avs_agent.apps.cli import main; main()"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_mp4(name: str, path: Path, fps: int = 2) -> Path:
    """A dev clip as a real video: each of its 5 frames shown for one second (``fps`` copies), its wav as AAC."""
    import av

    from avs_agent.tools.media import decode_audio

    frames, wav, _ = dev_clip_paths(name)
    audio = decode_audio(wav)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width = vs.height = 224
        vs.pix_fmt = "yuv420p"
        as_ = out.add_stream("aac", rate=16000)
        as_.layout = "mono"
        for i in range(5):
            img = np.asarray(Image.open(frames / f"{name}_{i + 1}.png").convert("RGB"))
            for k in range(fps):
                f = av.VideoFrame.from_ndarray(img, format="rgb24")
                f.pts = i * fps + k
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
    return path


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    u = np.logical_or(a, b).sum()
    return 1.0 if u == 0 else float(np.logical_and(a, b).sum() / u)


def _screenshot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    if keep := os.environ.get("AVS_UI_SCREENSHOTS"):
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / name)
    return path


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    assert Path(CHROMIUM).exists(), (
        f"chromium not found at {CHROMIUM}: apt-get install -y chromium (or set AVS_UI_CHROMIUM)"
    )
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The page served in this process (the lite models load once), on a free loopback port."""
    from avs_agent.agent.settings import load_settings
    from avs_agent.apps.ui import launch

    root = tmp_path_factory.mktemp("ui")
    settings = load_settings(
        overrides=(f"chat.checkpoint_path={root / 'chat.sqlite'}", f"models_dir={SHARED / 'models'}")
    )
    demo, url = launch(settings, port=_free_port(), out_root=root / "threads", block=False)
    yield url, root / "threads"
    demo.close()


@pytest.mark.ui
def test_page_upload_ask_and_follow_up(browser, server, tmp_path, dev_set):
    url, out_root = server
    video = build_mp4(CLIP, tmp_path / "car_horn.mp4")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(url)
        page.wait_for_selector("#video input[type=file]", state="attached")
        page.set_input_files("#video input[type=file]", str(video))
        page.wait_for_selector("#status:has-text('Opened car_horn.mp4')", timeout=30_000)

        # Ask with the box empty asks the question its placeholder shows
        assert page.get_attribute("#question textarea", "placeholder") == "what is making the sound?"
        page.click("#ask")
        page.wait_for_selector("#chat:has-text('what is making the sound?')", timeout=10_000)
        # long work shows its progress: the agent's step and a share
        page.wait_for_function("/\\d+\\.\\d%/.test(document.body.innerText)", timeout=30_000)
        page.wait_for_function("document.querySelectorAll('#overlays img').length >= 5", timeout=90_000)
        page.wait_for_selector("#answer h3:has-text('car')", timeout=10_000)
        answer = page.inner_text("#answer")
        assert "car" in answer and "making the sound" in answer, answer
        assert "car" in page.inner_text("#chat")
        captions = page.inner_text("#overlays")
        assert "1 · " in captions and "car" in captions, captions
        _assert_layout_clear(page)
        # every overlay image the page shows loads (served by the page, not a broken link): wait for
        # the browser to finish loading them (a broken one completes with width 0 and fails below)
        page.wait_for_function(
            "[...document.querySelectorAll('#overlays img')].every(e => e.complete)", timeout=20_000
        )
        sizes = page.eval_on_selector_all("#overlays img", "els => els.map(e => e.naturalWidth)")
        assert len(sizes) >= 5 and all(w > 0 for w in sizes), sizes
        # the answer's video plays in the page: Chromium decodes overlay.mp4 (H.264 + AAC) and knows
        # its length, about the clip's 5 s; the timeline image loads too
        page.wait_for_selector("#overlay-video video", timeout=20_000)
        page.wait_for_function(
            "(() => { const v = document.querySelector('#overlay-video video'); return v && v.readyState >= 1 && v.duration > 0; })()",
            timeout=20_000,
        )
        duration = page.eval_on_selector("#overlay-video video", "v => v.duration")
        assert 4.5 <= duration <= 5.5, duration
        played = page.eval_on_selector(
            "#overlay-video video",
            "v => { v.muted = true; return v.play().then(() => new Promise(r => setTimeout(() => r(v.currentTime), 700))); }",
        )
        assert played > 0, played
        page.wait_for_function(
            "(() => { const i = document.querySelector('#timeline img'); return i && i.naturalWidth > 0; })()",
            timeout=10_000,
        )
        # the mask behind those overlays is on the car
        (thread_dir,) = [p for p in out_root.iterdir() if p.is_dir()]
        masks = thread_dir / "turn_001" / "masks"
        _, _, gt_dir = dev_clip_paths(CLIP)
        ious = [
            _iou(
                np.asarray(Image.open(masks / f"frame_{i:04d}.png")) > 0,
                np.asarray(Image.open(gt_dir / f"{CLIP}_{i}.png")) > 127,
            )
            for i in range(1, 6)
        ]
        assert np.mean(ious) >= 0.5, ious
        _screenshot(page, tmp_path, "ui_answer.png")

        # a follow-up in the same conversation is answered from what was found (Enter sends it)
        page.fill("#question textarea", "which seconds?")
        page.press("#question textarea", "Enter")
        page.wait_for_selector("#chat:has-text('Found the car in frames 1-5')", timeout=30_000)
        assert not (thread_dir / "turn_002").exists()
        # the trace is folded away until opened
        assert not page.is_visible("#trace pre")
        page.click("#trace-box button")
        page.wait_for_selector("#trace pre:has-text('propose')", timeout=5_000)
        _screenshot(page, tmp_path, "ui_follow_up.png")

        # asking for another object re-segments: new overlays replace the gallery
        page.fill("#question textarea", "segment the person instead")
        page.press("#question textarea", "Enter")
        # (YOLOX sees a small, faint person in some frames: the reply either places the person in
        # those frames or says its masks are empty)
        page.wait_for_selector(
            "#chat:has-text('Here is the person, found in frames'), #chat:has-text('the masks are empty')",
            timeout=60_000,
        )
        last = page.inner_text("#chat").split("segment the person instead")[-1]
        assert "person" in last and (
            "found in frames" in last or "mask failed the check" in last or "could not find" in last
        ), last
        found = "found in frames" in last
        page.wait_for_selector(f"#answer h3:has-text('{'person' if found else 'Not found'}')", timeout=10_000)
        assert (thread_dir / "turn_002" / "overlays" / "frame_0005.png").is_file()
        assert ("person" if found else "no visible source") in page.inner_text("#overlays")

        # a reload goes on with the same conversation (its id is kept in the browser)
        page.reload()
        page.wait_for_selector(
            "#status:has-text('Resumed the conversation about car_horn.mp4')", timeout=30_000
        )
        page.wait_for_selector("#chat:has-text('Found the car in frames 1-5')", timeout=10_000)
        page.wait_for_function("document.querySelectorAll('#overlays img').length >= 5", timeout=10_000)
        page.fill("#question textarea", "why not the man?")
        page.press("#question textarea", "Enter")
        page.wait_for_selector("#chat:has-text('nothing in the audio points to')", timeout=30_000)
        _screenshot(page, tmp_path, "ui_resumed.png")
    finally:
        page.close()
    assert not errors, errors


def _assert_layout_clear(page) -> None:
    """No panel label lies over the answer's video or the timeline, and no gallery caption is cut off."""
    for panel, content in (("#overlay-video", "video"), ("#timeline", "img")):
        overlaps = page.eval_on_selector(
            panel,
            """(el, content) => {
                const c = el.querySelector(content); if (!c) return 'no ' + content;
                const r = c.getBoundingClientRect();
                return [...el.querySelectorAll('label, [data-testid=block-label]')]
                    .map(l => l.getBoundingClientRect())
                    .filter(l => l.width > 0 && l.bottom > r.top + 1 && l.top < r.bottom && l.right > r.left && l.left < r.right)
                    .length;
            }""",
            content,
        )
        assert overlaps == 0, (panel, overlaps)
    cut = page.eval_on_selector_all(
        "#overlays .caption-label",
        "els => els.filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.innerText)",
    )
    assert not cut, cut


@pytest.fixture(scope="module")
def close_call_server(tmp_path_factory):
    """The page with a margin at which the scooter clip's rider and scooter are a close call (it asks)."""
    from avs_agent.agent.settings import load_settings
    from avs_agent.apps.ui import launch

    root = tmp_path_factory.mktemp("ui_close")
    settings = load_settings(
        overrides=(
            f"chat.checkpoint_path={root / 'chat.sqlite'}",
            f"models_dir={SHARED / 'models'}",
            "agent.ask_margin=0.5",
        )
    )
    demo, url = launch(settings, port=_free_port(), out_root=root / "threads", block=False)
    yield url, root / "threads"
    demo.close()


@pytest.mark.ui
def test_page_close_call_follow_up_then_both_in_their_colours(browser, close_call_server, tmp_path, dev_set):
    """A close call on the page: a follow-up question is answered and the question stays; then "both"
    segments the rider and the scooter, two objects, each in its own colour in the gallery's
    overlays."""
    url, out_root = close_call_server
    video = build_mp4("davis_scooter_black_engine_03", tmp_path / "scooter.mp4")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(url)
        page.wait_for_selector("#video input[type=file]", state="attached")
        page.set_input_files("#video input[type=file]", str(video))
        page.wait_for_selector("#status:has-text('Opened scooter.mp4')", timeout=30_000)
        page.click("#ask")
        page.wait_for_selector("#chat:has-text('Which one is it?')", timeout=240_000)
        page.fill("#question textarea", "why not the motorcycle?")
        page.press("#question textarea", "Enter")
        page.wait_for_selector("#chat:has-text('not ruled out the motorcycle')", timeout=30_000)
        page.fill("#question textarea", "both")
        page.press("#question textarea", "Enter")
        page.wait_for_selector("#chat:has-text('You chose the')", timeout=180_000)
        chosen = page.inner_text("#chat").split("You chose")[-1]
        assert "the person" in chosen and "the motorcycle" in chosen, chosen
        page.wait_for_function("document.querySelectorAll('#overlays img').length >= 5", timeout=30_000)
        captions = page.inner_text("#overlays")
        assert "person" in captions and "motorcycle" in captions, captions
        _assert_layout_clear(page)
        _screenshot(page, tmp_path, "ui_close_call.png")
    finally:
        page.close()
    # the overlays the gallery shows draw each object in its own colour
    import json

    import supervision as sv

    (thread_dir,) = [p for p in out_root.iterdir() if p.is_dir()]
    (turn,) = [p for p in thread_dir.iterdir() if p.is_dir() and (p / "masks.json").is_file()]
    data = json.loads((turn / "masks.json").read_text())
    assert sorted(data["labels"]) == ["motorcycle", "person"]
    frame = next(f for f in data["frames"] if len(f["objects"]) == 2)
    overlay = np.asarray(Image.open(turn / "overlays" / f"frame_{frame['index'] + 1:04d}.png").convert("RGB"))
    for n, label in enumerate(data["labels"]):
        colour = np.array(sv.ColorPalette.DEFAULT.by_idx(n).as_rgb())
        assert (np.abs(overlay.astype(int) - colour).max(axis=2) <= 2).sum() >= 30, label


@pytest.mark.ui
def test_page_says_clearly_when_an_upload_is_not_media(browser, server, tmp_path):
    url, _ = server
    notes = tmp_path / "notes.txt"
    notes.write_text("not a video")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 2000)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(url)
        page.wait_for_selector("#video input[type=file]", state="attached")
        # a file named like a video that is not one: our own message, by file name, no traceback
        page.set_input_files("#video input[type=file]", str(broken))
        page.wait_for_selector("#status:has-text('Cannot use this upload')", timeout=30_000)
        status = page.inner_text("#status")
        assert "cannot open video broken.mp4" in status and "Traceback" not in status, status
        # asking before any media is opened
        page.fill("#question textarea", "what is making the sound?")
        page.click("#ask")
        page.wait_for_selector("#chat:has-text('Upload a video')", timeout=10_000)
        # a text file in the image slot
        page.get_by_role("tab", name="Image + audio").click()
        page.set_input_files("#image input[type=file]", str(notes))
        page.wait_for_selector("#status:has-text(\"unsupported media type '.txt'\")", timeout=30_000)
        # an image without its audio yet
        frames, wav, _ = dev_clip_paths(CLIP)
        page.locator("#image button[aria-label='Clear']").first.click()
        page.set_input_files("#image input[type=file]", str(frames / f"{CLIP}_1.png"))
        page.wait_for_selector("#status:has-text('Now add the audio')", timeout=30_000)
        page.set_input_files("#audio input[type=file]", str(wav))
        page.wait_for_selector(f"#status:has-text('Opened {CLIP}_1.png with {CLIP}.wav')", timeout=30_000)
        _screenshot(page, tmp_path, "ui_errors.png")
    finally:
        page.close()


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer in {timeout} s")


@pytest.mark.ui
def test_ui_command_serves_on_loopback_with_auth(browser, tmp_path):
    port = _free_port()
    env = os.environ | {"AVS_AGENT_CHAT__CHECKPOINT_PATH": str(tmp_path / "chat.sqlite")}
    proc = subprocess.Popen(
        [*CLI, "ui", "--port", str(port), "--auth", "ana:s3cret"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_http(url, proc)
        with pytest.raises(urllib.error.HTTPError) as info:  # the page's API needs the login
            urllib.request.urlopen(url + "config", timeout=5)
        assert info.value.code == 401
        page = browser.new_page()
        try:
            page.goto(url)
            page.fill("input[type=text]", "ana")
            page.fill("input[type=password]", "wrong")
            page.press("input[type=password]", "Enter")
            page.wait_for_selector("text=Incorrect", timeout=10_000)
            page.reload()
            page.fill("input[type=text]", "ana")
            page.fill("input[type=password]", "s3cret")
            page.press("input[type=password]", "Enter")
            page.wait_for_selector("#video", timeout=20_000)
        finally:
            page.close()
    finally:
        proc.terminate()
        out, errs = proc.communicate(timeout=20)
    # one line of our own says where the page is; Gradio's share=True hint is not for this user
    assert f"avs-agent page on http://127.0.0.1:{port}" in out and "share=True" not in out + errs


def test_ui_command_refuses_a_public_address_without_auth():
    for args, needle in [
        (["ui", "--host", "0.0.0.0"], "--auth USER:PASSWORD"),
        (["ui", "--auth", "nopassword"], "--auth must be USER:PASSWORD"),
    ]:
        res = run_cli(*args)
        assert res.exit_code == 2 and len(res.error_lines) == 1 and needle in res.error_lines[0], res.stderr


def test_page_handlers_without_a_browser(tmp_path):
    """The page's messages: path names hidden, CLI flags translated, questions before media."""
    from avs_agent.agent.settings import load_settings
    from avs_agent.apps.ui import ChatPage, message_text, page_message
    from avs_agent.tools.errors import MediaError
    from avs_agent.tools.server.settings import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    assert message_text([{"type": "text", "text": "why?"}]) == "why?" and message_text("hi") == "hi"
    msg = page_message(
        MediaError("/tmp/gradio/ab12/x.png is an image: give the sound with --audio FILE"),
        {"/tmp/gradio/ab12/x.png": "x.png"},
    )
    assert msg == "x.png is an image: give the sound with its audio file (Image + audio tab)"
    page = ChatPage(load_settings(), tmp_path)
    assert page.ask("what is making the sound?", None)["text"].startswith("Upload a video")
    assert page.ask("  ", "abc")["text"].startswith("Open a video first")  # the empty box asks the question
    thread, status = page.open_media(str(tmp_path / "missing.mp4"), None)
    assert thread is None and status.startswith("**Cannot use this upload:** media not found: missing.mp4")


def test_page_asks_on_a_close_call_and_segments_the_choice(tmp_path, dev_set):
    """The page's handlers on a close call: the question with the numbered frame in the gallery, then
    the typed choice resumes the paused run and the gallery shows what the person chose."""
    from tests.conftest import dev_clip_paths

    from avs_agent.agent.settings import load_settings
    from avs_agent.apps.ui import ChatPage

    frames, wav, _ = dev_clip_paths("davis_scooter_black_engine_03")
    page = ChatPage(load_settings(overrides=["agent.ask_margin=0.5"]), tmp_path)
    thread, _ = page.open_media(str(frames), str(wav))
    asked = page.ask("what is making the sound?", thread)
    assert asked["kind"] == "question" and "1 = person, 2 = motorcycle" in asked["text"]
    ((image, caption),) = asked["gallery"]
    assert image.endswith(".jpg") and "1, 2 or both" in caption and asked["video"] is None
    reloaded = ChatPage(load_settings(overrides=["agent.ask_margin=0.5"]), tmp_path).resume(thread)
    assert reloaded["history"][-1]["content"] == asked["text"]  # a reload asks again
    follow = page.ask("why not the motorcycle?", thread)  # a question while it waits: answered, still waiting
    assert (
        follow["kind"] == "question"
        and "not ruled out the motorcycle" in follow["text"]
        and follow["gallery"]
    )
    chosen = page.ask("2", thread)
    assert chosen["kind"] == "analysis" and "You chose the motorcycle" in chosen["text"]
    assert chosen["gallery"] and all(
        "motorcycle" in cap or "no visible" in cap for _, cap in chosen["gallery"]
    )


def test_the_progress_bar_follows_the_stage_codes():
    """The page's bar moves by each progress event's stage (a code), never by its words, and never
    back: a retry's segment after the check keeps the share already reached."""
    from avs_agent.apps.ui import STAGE_SHARE, progress_steps
    from avs_agent.tools.types import Progress, TraceStep

    shown: list[tuple[float, str]] = []
    report = progress_steps(lambda share, desc: shown.append((share, desc)))
    report(Progress(stage="start", event="analysing", text="analysing"))
    report(Progress(stage="perceive", event="tagging_audio", text="the words do not matter"))
    report(Progress.of_step(TraceStep(node="check", event="check_failed", frame=0, message="failed: x")))
    report(Progress.of_step(TraceStep(node="segment", event="segmented", frame=0, message="segmented y")))
    report(Progress(stage="a-stage-it-does-not-know", event="x", text="z"))
    shares = [s for s, _ in shown]
    assert shares == [STAGE_SHARE["start"], STAGE_SHARE["perceive"], *[STAGE_SHARE["check"]] * 3]
    assert shown[2][1] == "check (frame 1): failed: x"  # the step in words, as the bar shows it
