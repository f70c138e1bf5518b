"""Writes small real media files with PyAV for the tests (no binary fixtures in the repo)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

CODECS = {  # container suffix -> (video codec, audio codec)
    ".mp4": ("libx264", "aac"),
    ".mkv": ("libx264", "aac"),
    ".mov": ("libx264", "aac"),
    ".avi": ("mpeg4", "mp3"),
    ".webm": ("libvpx", "libopus"),
}


def tone(seconds: float, rate: int, channels: int = 1, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([wave] * channels)


def write_video(
    path: Path,
    seconds: float = 3.0,
    fps: int = 10,
    size=(64, 48),
    audio_rate: int | None = 48000,
    channels: int = 2,
) -> Path:
    import av

    vcodec, acodec = CODECS[path.suffix]
    with av.open(str(path), "w") as out:
        vs = out.add_stream(vcodec, rate=fps)
        vs.width, vs.height = size
        vs.pix_fmt = "yuv420p"
        as_ = None
        if audio_rate:
            as_ = out.add_stream(acodec, rate=audio_rate)
            as_.layout = "stereo" if channels == 2 else "mono"
        n = max(1, int(round(seconds * fps)))
        for i in range(n):
            img = np.zeros((size[1], size[0], 3), np.uint8)
            img[..., 0] = int(255 * i / n)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        if as_ is not None:
            data = tone(seconds, audio_rate, channels)
            layout = as_.layout.name
            resampler = av.AudioResampler(
                format=as_.codec_context.format.name, layout=layout, rate=audio_rate
            )
            chunk = as_.codec_context.frame_size or 1024
            for start in range(0, data.shape[1], chunk):
                af = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(data[:, start : start + chunk]), format="fltp", layout=layout
                )
                af.sample_rate = audio_rate
                af.pts = start
                af.time_base = Fraction(1, audio_rate)
                for converted in resampler.resample(af):
                    for packet in as_.encode(converted):
                        out.mux(packet)
            for packet in as_.encode():
                out.mux(packet)
    return path


def write_wav(path: Path, seconds: float, rate: int = 22050, channels: int = 1) -> Path:
    import wave

    data = (tone(seconds, rate, channels).T * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data.tobytes())
    return path


def write_image(path: Path, size=(80, 60)) -> Path:
    from PIL import Image

    Image.fromarray(np.full((size[1], size[0], 3), 128, np.uint8)).save(path)
    return path
