"""Loading of the lite models' runtimes (TFLite via ai-edge-litert, ONNX via onnxruntime), cached per process."""

from __future__ import annotations

import functools
import threading
from pathlib import Path

from tools.errors import ModelNotFoundError

LITE_HINT = "set AVS_AGENT_MODELS_DIR to the folder holding the lite models (yamnet/, yolox_nano/, deeplabv3_mnv2_voc/)"


def require_file(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"{what} weights not found at {path}: {LITE_HINT}")
    return path


@functools.cache
def _tflite(path: str, threads: int):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ModelNotFoundError("ai-edge-litert is not installed: pip install 'avs-agent[lite]'") from exc
    interp = Interpreter(model_path=path, num_threads=threads)
    interp.allocate_tensors()
    return interp, threading.Lock()


def tflite_interpreter(path: Path, what: str, threads: int = 2):
    """(interpreter, lock): a TFLite interpreter is not thread-safe, so calls hold the lock."""
    return _tflite(str(require_file(path, what)), threads)


@functools.cache
def _onnx(path: str, threads: int):
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover
        raise ModelNotFoundError("onnxruntime is not installed: pip install 'avs-agent[lite]'") from exc
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


def onnx_session(path: Path, what: str, threads: int = 2):
    return _onnx(str(require_file(path, what)), threads)
