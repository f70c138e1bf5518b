import numpy as np
import pytest
from tests.media_factory import write_image, write_video, write_wav

from avs_agent.tools.errors import MediaError
from avs_agent.tools.media import load_clip
from avs_agent.tools.types import SAMPLE_RATE


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".webm", ".avi", ".mov"])
def test_video_containers_give_1fps_frames_and_16k_mono(tmp_path, suffix):
    path = write_video(tmp_path / f"v{suffix}", seconds=3.0)
    clip = load_clip(path)
    assert len(clip.frames) == 3
    assert [round(f.time_s) for f in clip.frames] == [0, 1, 2] or all(
        abs(f.time_s - (i + 0.5)) < 0.15 for i, f in enumerate(clip.frames)
    )
    assert clip.frames[0].image.shape == (48, 64, 3)
    assert len(clip.segments) == 3 and all(len(s.waveform) == SAMPLE_RATE for s in clip.segments[:2])
    assert abs(clip.duration_s - 3.0) < 0.2
    assert clip.audio.waveform.dtype == np.float32 and clip.audio.rms > 0.1
    assert clip.frames[0].aspect == pytest.approx(64 / 48)


def test_very_short_video_gives_one_frame(tmp_path):
    clip = load_clip(write_video(tmp_path / "short.mp4", seconds=0.3, audio_rate=8000, channels=1))
    assert len(clip.frames) == 1 and len(clip.segments) == 1
    assert 0 < clip.duration_s < 0.6


def test_long_video_is_truncated(tmp_path):
    clip = load_clip(write_video(tmp_path / "long.mp4", seconds=6.0, fps=5), max_seconds=2.0)
    assert len(clip.frames) == 2 and clip.meta["truncated"]
    assert clip.duration_s <= 2.0 + 1e-6


def test_image_plus_audio_odd_rate_stereo(tmp_path):
    img = write_image(tmp_path / "x.png")
    wav = write_wav(tmp_path / "a.wav", seconds=2.5, rate=22050, channels=2)
    clip = load_clip(img, wav)
    assert abs(clip.duration_s - 2.5) < 0.01
    # the whole sound is heard, second by second, with the one image standing for each second
    assert len(clip.frames) == len(clip.segments) == 3 and clip.frames[0].image.shape == (60, 80, 3)
    assert all(f.image is clip.frames[0].image for f in clip.frames)
    assert [f.time_s for f in clip.frames] == [0.5, 1.5, 2.5]
    assert [(s.start_s, s.end_s) for s in clip.segments] == [(0.0, 1.0), (1.0, 2.0), (2.0, 2.5)]


def test_frame_folder_plus_audio(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in (1, 2, 10):
        write_image(folder / f"clip_{i}.png")
    clip = load_clip(folder, write_wav(tmp_path / "a.wav", 3.0))
    assert len(clip.frames) == 3
    assert [s.start_s for s in clip.segments] == [0.0, 1.0, 2.0]


def test_large_frames_are_downscaled(tmp_path):
    clip = load_clip(
        write_image(tmp_path / "big.png", size=(3000, 1000)),
        write_wav(tmp_path / "a.wav", 1.0),
        max_side=1280,
    )
    assert max(clip.frames[0].image.shape[:2]) == 1280


def test_bad_inputs_are_media_errors(tmp_path):
    with pytest.raises(MediaError, match="not found"):
        load_clip(tmp_path / "missing.mp4")
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    with pytest.raises(MediaError, match="cannot"):
        load_clip(bad)
    with pytest.raises(MediaError, match="no audio track"):
        load_clip(write_video(tmp_path / "silent.mp4", audio_rate=None))
    with pytest.raises(MediaError, match="unsupported"):
        load_clip((tmp_path / "notes.txt").with_suffix(".txt")) if (tmp_path / "notes.txt").write_text(
            "x"
        ) else None
    with pytest.raises(MediaError, match="give the sound with --audio"):
        load_clip(write_image(tmp_path / "i.png"))
    with pytest.raises(MediaError, match="is empty"):
        load_clip(write_image(tmp_path / "j.png"), write_wav(tmp_path / "empty.wav", 0.0))
    with pytest.raises(MediaError, match="audio file"):
        load_clip(write_wav(tmp_path / "only.wav", 1.0))
    with pytest.raises(MediaError, match="cannot read image"):
        (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
        load_clip(tmp_path / "broken.png", write_wav(tmp_path / "b.wav", 1.0))


@pytest.mark.parametrize("fps", [1, 2, 25])
def test_frame_of_each_second_is_the_one_nearest_its_middle(tmp_path, fps):
    """Frame i shows second i at any frame rate (a 1 fps video is not shifted by a second)."""
    clip = load_clip(write_video(tmp_path / f"f{fps}.mp4", seconds=5.0, fps=fps))
    assert len(clip.frames) == 5
    assert [int(f.time_s) for f in clip.frames] == [0, 1, 2, 3, 4]
    reds = [int(f.image[0, 0, 0]) for f in clip.frames]
    assert reds == sorted(reds) and len(set(reds)) == 5  # distinct frames, in order
