"""Chat memory: follow-ups answered from the stored state, re-segmentation, resume by thread id."""

from agent.apps.conversation import Conversation, classify
from agent.settings import load_settings
from tests.conftest import dev_clip_paths


def test_classify_follow_ups():
    assert classify("what is making the sound?", False) == ("new", None)
    assert classify("why not the man?", True) == ("why_not", "man")
    assert classify("segment the car instead", True) == ("resegment", "car")
    assert classify("which seconds?", True)[0] == "when"
    assert classify("why?", True)[0] == "why"
    assert classify("what is making the sound now?", True)[0] == "new"


def test_conversation_follow_ups_and_resume(tmp_path, dev_set):
    frames, wav, _ = dev_clip_paths("pets_great_pyrenees_177_bark_01")
    settings = load_settings(overrides=[f"chat.checkpoint_path={tmp_path / 'chat.sqlite'}"])
    conv = Conversation(settings, out_root=tmp_path / "threads")
    assert conv.ask("what is making the sound?").kind == "error"  # no media yet
    conv.open(frames, wav)
    first = conv.ask("What is making the sound?")
    assert first.kind == "analysis" and first.labels == ["dog"] and len(first.overlays) == 5
    why_not = conv.ask("why not the man?")
    assert why_not.kind == "followup" and "visible" in why_not.text and "audio" in why_not.text
    when = conv.ask("which seconds?")
    assert "dog" in when.text and "seconds 0-5" in when.text
    again = conv.ask("segment the person instead")
    assert again.kind == "resegment" and again.labels == ["person"] and again.out_dir != first.out_dir
    assert conv.trace() and any(s.node == "verify" for s in conv.trace())

    resumed = Conversation(settings, thread_id=conv.thread_id, out_root=tmp_path / "threads")
    assert resumed.media == str(frames)
    assert "dog" in resumed.ask("which seconds?").text  # answered from the stored state of the first analysis
    assert len(resumed.turns()) >= 10
