"""Loading of the lite models' runtimes (TFLite via ai-edge-litert, ONNX via onnxruntime), cached per process.
A model is a ``tools.locate.Location``; a missing file is its one-line ``ModelNotFoundError``."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from collections.abc import Iterator

from avs_agent.tools.errors import ModelNotFoundError
from avs_agent.tools.locate import Location

_FD_LOCK = threading.Lock()


@contextlib.contextmanager
def native_stderr_quiet() -> Iterator[None]:
    """Silence what native code writes to the process's stderr (fd 2) while the block runs: TFLite's
    "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." comes from C++, so Python's logging cannot
    hold it back. Only model construction runs inside; Python's own warnings stay visible outside."""
    with _FD_LOCK:
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)


@functools.cache
def _tflite(path: str, threads: int):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ModelNotFoundError("ai-edge-litert is not installed: pip install 'avs-agent[lite]'") from exc
    with native_stderr_quiet():
        interp = Interpreter(model_path=path, num_threads=threads)
        interp.allocate_tensors()
    return interp, threading.Lock()


def tflite_interpreter(model: Location, what: str, threads: int = 2):
    """(interpreter, lock): a TFLite interpreter is not thread-safe, so calls hold the lock."""
    return _tflite(str(model.file(what)), threads)


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


def onnx_session(model: Location, what: str, threads: int = 2):
    return _onnx(str(model.file(what)), threads)
