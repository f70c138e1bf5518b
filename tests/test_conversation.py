"""Chat memory: follow-ups answered from the stored state, re-segmentation, resume by thread id."""

from tests.conftest import dev_clip_paths

from avs_agent.agent.settings import load_settings
from avs_agent.apps.conversation import Conversation, classify
from avs_agent.tools.types import Progress


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
    both = conv.ask("is it the dog or the man?")  # each named object answered, no "the dog or the man is"
    assert (
        both.text.startswith("The dog is what I found making the sound.")
        and "man is visible"
        in both.text  # "The man is visible ..." or "A man is visible ... nothing in the audio"
    )
    again = conv.ask("segment the person instead")
    assert again.kind == "resegment" and again.labels == ["person"] and again.out_dir != first.out_dir
    # /trace shows the re-segmentation's decisions, not the first analysis's
    assert any(s.event == "requested" and s.object == "person" for s in conv.trace())

    resumed = Conversation(settings, thread_id=conv.thread_id, out_root=tmp_path / "threads")
    assert resumed.media == str(frames)
    assert "dog" in resumed.ask("which seconds?").text  # answered from the stored state of the first analysis
    assert len(resumed.turns()) >= 10


CLOSE = "davis_scooter_black_engine_03"
"""A scooter and its rider, an engine and a dog's bark heard: the motorcycle's clip rank is 0.69 of the
person's (0.83 from an mp4 of the clip), a close call at ask_margin 0.5 (none at the default 0.15)
between two objects; the rules take both."""


def test_a_close_call_asks_the_person_and_resumes_with_their_choice(tmp_path, dev_set):
    """The run pauses with a LangGraph interrupt (person or motorcycle?), the question survives a
    restart in the SQLite checkpointer, and the answer segments what the person chose without redoing
    the perception (the run resumes from its checkpoint). Without ask_person the rules take both."""
    frames, wav, _ = dev_clip_paths(CLOSE)
    over = [f"chat.checkpoint_path={tmp_path / 'chat.sqlite'}", "agent.ask_margin=0.5"]
    conv = Conversation(load_settings(overrides=over), out_root=tmp_path / "threads")
    conv.open(frames, wav)
    asked = conv.ask("What is making the sound?")
    assert asked.kind == "question" and "1 = person, 2 = motorcycle" in asked.text
    from PIL import Image

    assert Image.open(asked.overlays[0]).size[0] > 224  # the frame with both boxes numbered
    assert conv.pending["options"] == {"1": ["person"], "2": ["motorcycle"], "both": ["person", "motorcycle"]}

    resumed = Conversation(
        load_settings(overrides=over), thread_id=conv.thread_id, out_root=tmp_path / "threads"
    )
    assert resumed.pending is not None
    # follow-ups while the question waits are answered, never taken as a choice; the question stays
    why_not = resumed.ask("why not the motorcycle?")
    assert why_not.kind == "question" and resumed.pending is not None
    assert "not ruled out the motorcycle" in why_not.text and "1 = person, 2 = motorcycle" in why_not.text
    when = resumed.ask("which seconds?")
    assert when.kind == "question" and "not decided yet" in when.text and "frames 1-5" in when.text
    assert resumed.pending is not None and "names neither" not in when.text
    steps: list[Progress] = []
    chosen = resumed.ask("2", progress=steps.append)
    assert chosen.kind == "analysis" and chosen.labels == ["motorcycle"] and resumed.pending is None
    assert "(You chose the motorcycle when I asked: person or motorcycle.)" in chosen.text
    assert "(I " not in chosen.text
    assert not any(s.event in ("tagging_audio", "grounding") for s in steps)  # not redone
    (confirm,) = [s for s in resumed.trace() if s.event == "asked_person"]
    assert confirm.object == "motorcycle" and confirm.data["chosen"] == ["motorcycle"]
    assert (
        confirm.message == "asked: person or motorcycle; chosen: motorcycle"
    )  # as /trace and the page show it
    assert resumed.ask("which seconds?").kind == "followup"

    rules = Conversation(
        load_settings(overrides=[*over, "chat.ask_person=false"]), out_root=tmp_path / "threads"
    )
    rules.open(frames, wav)
    # the rules take both: two objects, two names
    assert sorted(rules.ask("What is making the sound?").labels) == ["motorcycle", "person"]


def test_follow_ups_while_a_close_call_waits():
    """Which messages are questions (answered, the close call kept) and what they are told."""
    from avs_agent.apps.conversation import answer_while_asking, is_question

    for text in ("why not the person?", "which seconds?", "which seconds", "is it 2?", "why", "the person?"):
        assert is_question(text), text
    for text in ("1", "2", "both", "the person", "motorcycle please", "I don't know"):
        assert not is_question(text), text
    pending = {
        "options": {"1": ["motorcycle"], "2": ["person"], "both": ["motorcycle", "person"]},
        "evidence": {
            "motorcycle": {"frames": [0, 1, 2], "audio": 0.61},
            "person": {"frames": [3], "audio": 0.52},
        },
    }
    text = answer_while_asking("why not the person?", pending)
    assert "not ruled out the person" in text and "motorcycle 0.61, person 0.52" in text
    assert text.endswith("1 = motorcycle, 2 = person, or both?")
    text = answer_while_asking("which seconds?", pending)
    assert (
        "motorcycle is visible in frames 1-3 (seconds 0-3)" in text
        and "person is visible in frame 4 (" in text
    )
    assert "not one of the two" in answer_while_asking("why not the dog?", pending)


def test_follow_up_answers_name_each_object_and_count_frames_right():
    from avs_agent.apps.conversation import _frames_text, split_objects

    assert split_objects("truck or the car") == ["truck", "car"]
    assert split_objects("dog, the cat and a bird") == ["dog", "cat", "bird"]
    assert _frames_text([3]) == "frame 4 (seconds 3-4)"
    assert _frames_text([0, 1, 2, 4]) == "frames 1-3 and 5 (seconds 0-3 and 4-5)"


def test_person_choice():
    from avs_agent.agent.nodes import person_choice

    options = {"1": ["car"], "2": ["truck"], "both": ["car", "truck"]}
    assert person_choice("1", options) == ["car"]
    assert person_choice(" 2. ", options) == ["truck"]
    assert person_choice("both", options) == ["car", "truck"]
    assert person_choice("the truck", options) == ["truck"]
    assert person_choice(["car"], options) == ["car"]
    assert person_choice("the dog", options) is None
