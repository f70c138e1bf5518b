"""Media input: a video, an image plus an audio file, or a folder of frames plus an audio file.

Everything becomes a ``Clip``: frames at 1 fps (AVSBench's convention: frame i shows second
[i, i+1), taken at its middle) and the audio as 16 kHz mono float32, cut into one 1-s segment per frame,
plus the whole clip. Decoding goes through PyAV (FFmpeg), so any container and codec FFmpeg reads works;
the file-name suffix only decides how the input is treated.

Every problem the user can cause raises ``MediaError`` with one line that names the file.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from avs_agent.tools.errors import MediaError
from avs_agent.tools.settings import MAX_FPS, MediaSettings
from avs_agent.tools.types import SAMPLE_RATE, AudioSegment, Clip, Frame

VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
AUDIO_SUFFIXES = {".wav", ".mp3", ".flac", ".ogg", ".m4a", ".aac", ".opus", ".wma"}


def open_clip(media: str | Path, audio: str | Path | None, settings: MediaSettings) -> Clip:
    """``load_clip`` with the config's media settings (what ask, the chat and the page load)."""
    return load_clip(
        media,
        audio,
        max_seconds=settings.max_seconds,
        max_side=settings.max_side,
        aspect=settings.aspect,
        fps=settings.fps,
    )


def load_clip(
    media: str | Path,
    audio: str | Path | None = None,
    *,
    max_seconds: float = 120.0,
    max_side: int = 1280,
    aspect: float | None = None,
    fps: float = 1.0,
) -> Clip:
    """Load media as a ``Clip``: frames at ``fps`` per second, each with the audio around it.

    Args:
        media: a video file, an image file, or a folder of frames (sorted by name, one per 1/fps s).
        audio: an audio file; required for an image or a folder, optional for a video (replaces its
            own audio track).
        max_seconds: only the first ``max_seconds`` of longer media are analysed (``meta['truncated']``).
        max_side: frames whose longer side exceeds this are downscaled to it (bounds memory on 4K video).
        aspect: display aspect (width / height) the frames should be seen at, when they were stored
            squashed (AVSBench's 224x224 frames of 16:9 video). None: the video's own display aspect.
        fps: frames analysed per second (1: AVSBench's convention). Frame i stands for the slot
            [i/fps, (i+1)/fps) and is the decoded frame nearest the slot's middle; its audio segment is
            the ``max(1/fps, 1 s)`` around that middle (a tagger needs about a second to hear a sound).
    """
    if not 0 < fps <= MAX_FPS:
        raise MediaError(f"fps must be above 0 and at most {MAX_FPS:g} frames per second, got {fps:g}")
    media = Path(media)
    if not media.exists():
        raise MediaError(f"media not found: {media}")
    if audio is not None:
        audio = Path(audio)
        if not audio.exists():
            raise MediaError(f"audio file not found: {audio}")
        if audio.is_dir():
            raise MediaError(f"--audio must be an audio file, got a folder: {audio}")

    meta: dict = {"media": str(media), "audio": str(audio) if audio else None}
    suffix = media.suffix.lower()
    if media.is_dir():
        images = _frame_files(media)
        if audio is None:
            raise MediaError(f"{media} is a folder of frames: give its audio with --audio FILE")
        wave = decode_audio(audio, max_seconds)
        n = max(1, min(len(images), math.ceil(max_seconds * fps)))
        frames = [
            Frame(i, round((i + 0.5) / fps, 3), read_image(p, max_side), aspect)
            for i, p in enumerate(images[:n])
        ]
        meta["truncated"] = len(images) > n
        return assemble_clip(str(media), frames, wave, one_segment=False, meta=meta, fps=fps)
    if suffix in IMAGE_SUFFIXES:
        if audio is None:
            raise MediaError(f"{media} is an image: give the sound with --audio FILE")
        wave = decode_audio(audio, max_seconds)
        image = read_image(media, max_side)  # the one image stands for every slot of its sound (shared)
        n = max(1, math.ceil(len(wave) / SAMPLE_RATE * fps - 0.1))  # as a video's slots (timestamp jitter)
        frames = [Frame(i, round((i + 0.5) / fps, 3), image, aspect) for i in range(n)]
        return assemble_clip(str(media), frames, wave, one_segment=False, meta=meta, fps=fps)
    if suffix in VIDEO_SUFFIXES:
        frames, video_aspect, truncated, source_fps = _decode_video(media, max_seconds, max_side, fps)
        meta["source_fps"] = source_fps
        for fr in frames:
            fr.aspect = aspect or video_aspect
        wave = decode_audio(audio or media, max_seconds)
        meta["truncated"] = truncated or len(wave) > max_seconds * SAMPLE_RATE
        # the clip's sound is what plays with its frames: an audio track running past the video's last
        # slot (an AAC encoder pads its last frame: 13 ms at 16 kHz on a 5-s clip) is cut there
        wave = wave[: max(1, round(len(frames) / fps * SAMPLE_RATE))]
        return assemble_clip(str(media), frames, wave, one_segment=False, meta=meta, fps=fps)
    if suffix in AUDIO_SUFFIXES:
        raise MediaError(f"{media} is an audio file: give a video, or an image with --audio {media.name}")
    kinds = ", ".join(sorted(s.lstrip(".") for s in VIDEO_SUFFIXES | IMAGE_SUFFIXES))
    raise MediaError(
        f"unsupported media type '{suffix or media.name}': expected a video or image ({kinds}) or a folder of frames"
    )


def assemble_clip(
    source: str, frames: list[Frame], wave: np.ndarray, *, one_segment: bool, meta: dict, fps: float = 1.0
) -> Clip:
    """A Clip from decoded frames and a 16 kHz mono wave: one audio segment per frame slot (1/fps s each),
    or the whole sound as one segment (``one_segment``, a still image's single frame)."""
    whole = AudioSegment(0.0, len(wave) / SAMPLE_RATE, wave)
    if one_segment:
        segments = [whole]
    else:
        segments = [audio_window(wave, i, fps) for i in range(len(frames))]
    meta["audio_seconds"] = round(whole.duration_s, 3)
    meta["fps"] = fps
    return Clip(source=source, frames=frames, segments=segments, audio=whole, meta=meta)


def audio_window(wave: np.ndarray, i: int, fps: float) -> AudioSegment:
    """Frame i's audio: ``max(1/fps, 1 s)`` from half that before its slot's middle (not before the
    clip's start), cut at the clip's end; at 1 fps exactly second i."""
    length = max(1.0 / fps, 1.0)
    mid = (i + 0.5) / fps
    start = max(0.0, mid - length / 2)
    end = min(len(wave) / SAMPLE_RATE, start + length)
    a, b = int(round(start * SAMPLE_RATE)), int(round(end * SAMPLE_RATE))
    return AudioSegment(round(start, 4), round(end, 4), np.ascontiguousarray(wave[a:b], dtype=np.float32))


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _frame_files(folder: Path) -> list[Path]:
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
    if not files:
        raise MediaError(f"no image frames ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {folder}")
    return files


def _downscale(image, max_side: int):
    from PIL import Image

    w, h = image.size
    if max(w, h) > max_side:
        scale = max_side / max(w, h)
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
    return image


def read_image(path: Path, max_side: int) -> np.ndarray:
    """An RGB uint8 image, downscaled so its longer side is at most ``max_side``; MediaError if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            rgb = _downscale(im.convert("RGB"), max_side)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise MediaError(f"cannot read image {path}: {_reason(exc)}") from None
    return np.asarray(rgb, dtype=np.uint8).copy()


def _open_media(path: Path, what: str):
    """An FFmpeg container for reading (PyAV), or MediaError naming ``what`` could not be opened."""
    import av

    try:
        return av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(f"cannot open {what} {path}: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    """The first line of an error, without FFmpeg's "[Errno 1094995529] " and the file name it repeats."""
    text = str(exc).strip().splitlines()
    line = re.sub(r"^\[Errno -?\d+\]\s*", "", text[0]) if text else ""
    line = re.sub(r":\s*'[^']*'$", "", line)
    return line or type(exc).__name__


def _decode_video(
    path: Path, max_seconds: float, max_side: int, fps: float = 1.0
) -> tuple[list[Frame], float | None, bool, float]:
    """Frames at ``fps``: for slot i, the decoded frame nearest its middle (i + 0.5) / fps within
    [i / fps, (i + 1) / fps); a slot with no frame of its own (a video slower than ``fps``) repeats the
    last frame before it. Also returns the display aspect, whether it was cut, and the source's rate."""
    import av

    container = _open_media(path, "video")
    with container:
        if not container.streams.video:
            raise MediaError(f"{path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        aspect = None
        if stream.width and stream.height:
            sar = stream.sample_aspect_ratio
            aspect = stream.width / stream.height * (float(sar) if sar else 1.0)
        picked: dict[int, Frame] = {}
        best: tuple[int, float, object, float] | None = None  # (second, distance to its middle, frame, time)
        last_t, start, truncated, decoded = 0.0, None, False, 0
        try:
            for vf in container.decode(stream):
                t = float(vf.time) if vf.time is not None else (last_t + 1 / 30)
                if start is None:
                    start = t
                t -= start
                if t >= max_seconds:
                    truncated = True
                    break
                decoded += 1
                last_t = t
                second = int(t * fps)
                dist = abs(t - (second + 0.5) / fps)
                if best is not None and best[0] != second:
                    picked[best[0]] = _video_frame(best[2], best[0], best[3], max_side)
                    best = None
                if best is None or dist < best[1]:
                    best = (second, dist, vf, t)
        except av.FFmpegError as exc:
            if not decoded:
                raise MediaError(f"cannot decode video {path}: {_reason(exc)}") from None
        if best is not None:
            picked[best[0]] = _video_frame(best[2], best[0], best[3], max_side)
        if not picked:
            raise MediaError(f"{path} has a video stream with no decodable frames")
        fps_source = float(stream.average_rate) if stream.average_rate else 30.0
        duration = container.duration / 1e6 if container.duration else last_t + 1.0 / fps_source
        duration = min(duration, last_t + 1.0 / fps_source, max_seconds)
        n_slots = max(1, math.ceil(duration * fps - 0.1))  # timestamps jitter by a frame in some containers
        frames: list[Frame] = []
        for i in range(n_slots):
            if i in picked:
                frames.append(picked[i])
            else:
                prev = frames[-1] if frames else picked[min(picked)]
                frames.append(Frame(i, prev.time_s, prev.image))
    return frames, aspect, truncated, fps_source


def _video_frame(vf, index: int, t: float, max_side: int) -> Frame:
    """A decoded frame as RGB uint8, downscaled to ``max_side`` (the same pixels as through PIL)."""
    if max(vf.width, vf.height) <= max_side:
        # a view of PyAV's buffer (rows padded): one contiguous copy of our own
        return Frame(index, round(t, 3), np.array(vf.to_ndarray(format="rgb24"), dtype=np.uint8, order="C"))
    image = _downscale(vf.to_image(), max_side)
    return Frame(index, round(t, 3), np.asarray(image, dtype=np.uint8).copy())


def decode_audio(path: Path, max_seconds: float = math.inf) -> np.ndarray:
    """Decode any audio FFmpeg reads to mono float32 at 16 kHz, (n,) in [-1, 1]."""
    import av

    container = _open_media(path, "audio in")
    with container:
        if not container.streams.audio:
            raise MediaError(f"{path} has no audio track")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        chunks: list[np.ndarray] = []
        total = 0
        limit = math.inf if math.isinf(max_seconds) else int(max_seconds * SAMPLE_RATE)
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    arr = out.to_ndarray().reshape(-1)
                    chunks.append(arr)
                    total += len(arr)
                if total >= limit:
                    break
            else:
                for out in resampler.resample(None):
                    chunks.append(out.to_ndarray().reshape(-1))
        except av.FFmpegError as exc:
            if not chunks:
                raise MediaError(f"cannot decode the audio of {path}: {_reason(exc)}") from None
    wave = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if not math.isinf(limit):
        wave = wave[:limit]
    if len(wave) == 0:
        raise MediaError(f"the audio of {path} is empty")
    np.clip(wave, -1.0, 1.0, out=wave)
    return np.ascontiguousarray(wave)


def write_audio(container, stream, wave: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """Encode a mono float waveform into ``stream`` (an audio stream of the PyAV output ``container``,
    e.g. ``add_stream("aac", rate=rate)`` with layout mono) and flush it."""
    import av

    wave = np.ascontiguousarray(wave, dtype=np.float32)
    for k in range(0, len(wave), 1024):
        frame = av.AudioFrame.from_ndarray(wave[None, k : k + 1024], format="flt", layout="mono")
        frame.sample_rate, frame.pts = rate, k
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
