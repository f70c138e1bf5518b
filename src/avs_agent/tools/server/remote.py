"""The remote backend: every tool protocol as an HTTP client of a tool server (``avs-agent serve``,
FastAPI or Ray Serve).

Selected by ``tools.backend: http://host:port`` (or https). The bearer token comes from the
``AVS_AGENT_TOKEN`` environment variable. The server decides the models and their settings; the client's
own ``tools.*`` sections (other than ``backend``) are not used. Calls are retried on connection errors
and on 503 (models still loading) with backoff; a server that stays down is a ``ToolServerError`` (a
``UserError``: one line, exit 2). Each tool's ``name`` is the server's tool name and the server says
whether its vocabulary is closed, so traces and decisions read as they do in-process.
"""

from __future__ import annotations

import os
import time
from typing import Any
from urllib.parse import urlparse

import numpy as np

from avs_agent.tools.errors import ConfigError, UserError
from avs_agent.tools.lite.tag_scorer import TagEmbeddingScorer
from avs_agent.tools.lite.tracker import InstanceTracker
from avs_agent.tools.server import wire
from avs_agent.tools.server.settings import TOKEN_ENV
from avs_agent.tools.settings import ToolConfig
from avs_agent.tools.types import AudioSegment, AudioTags, Captions, Frame, Segments


class ToolServerError(UserError):
    """The tool server is unreachable, refused the token, or refused a request."""


class RemoteClient:
    """A thread-safe HTTP client of one tool server (one connection pool, shared by its tools)."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout_s: float = 130.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        max_connections: int = 64,
    ):
        try:
            import httpx
        except ImportError:  # pragma: no cover - depends on the install
            raise ConfigError("the remote tool backend needs httpx: pip install 'avs-agent[serve]'") from None
        url = urlparse(base_url)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ConfigError(
                f"tools.backend must be 'local' or a server URL like http://127.0.0.1:8000, got '{base_url}'"
            )
        self.base_url = base_url.rstrip("/")
        self.retries = max(0, retries)
        self.backoff_s = backoff_s
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._httpx = httpx
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=5.0),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    def close(self) -> None:
        self._http.close()

    # --- transport --------------------------------------------------------------------------------
    def _request(self, verb: str, path: str, content: bytes | None = None) -> Any:
        httpx = self._httpx
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                resp = self._http.request(
                    verb,
                    path,
                    content=content,
                    headers={"Content-Type": wire.CONTENT_TYPE} if content is not None else None,
                )
            except (
                httpx.ConnectError,
                httpx.ConnectTimeout,
                httpx.RemoteProtocolError,
                httpx.ReadError,
                httpx.WriteError,
            ) as exc:
                if last:
                    reason = str(exc).split("\n")[0] or type(exc).__name__
                    raise ToolServerError(
                        f"tool server {self.base_url} is not reachable ({reason}) after {self.retries + 1} tries: "
                        f"start it with `avs-agent serve` or fix tools.backend"
                    ) from None
            except httpx.TimeoutException:
                raise ToolServerError(
                    f"tool server {self.base_url} did not answer {path} in time (timeout)"
                ) from None
            else:
                if resp.status_code == 503 and not last:
                    pass  # models loading: retry
                else:
                    return self._check(resp, path)
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def _check(self, resp: Any, path: str) -> Any:
        if resp.status_code < 400:
            return resp
        try:
            detail = resp.json().get("detail", resp.text)
        except Exception:
            detail = resp.text[:200]
        code = resp.status_code
        if code == 401:
            raise ToolServerError(
                f"tool server {self.base_url} refused the request (401): set {TOKEN_ENV} to the server's token"
            )
        if code in (404, 413, 422, 503, 504):
            raise ToolServerError(f"tool server {self.base_url} answered {code} to {path}: {detail}")
        raise RuntimeError(f"tool server {self.base_url} answered {code} to {path}: {detail}")

    # --- API --------------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        return self._request("GET", "/v1/info").json()

    def call(self, key: str, *args: Any) -> Any:
        method = wire.METHODS[key]
        meta, arrays = method.encode_args(*args)
        resp = self._request("POST", method.path, wire.pack(meta, arrays))
        try:
            return method.decode_result(*wire.unpack(resp.content))
        except wire.WireError as exc:
            raise RuntimeError(f"tool server {self.base_url} sent a malformed {key} answer: {exc}") from None


class _RemoteTool:
    def __init__(self, client: RemoteClient, name: str):
        self.client = client
        self.name = name

    def warm_up(self) -> None:
        """Nothing to load here: the server loaded its models before it took requests."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r} at {self.client.base_url})"


class RemoteAudioTagger(_RemoteTool):
    def tag(self, segments: list[AudioSegment]) -> list[AudioTags]:
        return self.client.call("tagger.tag", list(segments)) if segments else []


class RemoteGrounder(_RemoteTool):
    """The server's grounder. ``closed``: the server says its vocabulary is closed (lite), so the
    grounder proposes what it detects and reads free phrases as the vocabulary's names through the
    server's matcher, as it does in-process."""

    def __init__(
        self,
        client: RemoteClient,
        name: str,
        closed: bool = False,
        vocabulary: list[str] | None = None,
        matcher: RemoteTextMatcher | None = None,
    ):
        super().__init__(client, name)
        self.closed = closed
        self.vocabulary = list(vocabulary or [])
        self.matcher = matcher or RemoteTextMatcher(client, "")

    def proposals(self, frame: Frame) -> list[str]:
        return list(dict.fromkeys(self.detect_all(frame).labels)) if self.closed else []

    def words(self, phrases: list[str]) -> list[str]:
        if not self.closed or not phrases:
            return list(dict.fromkeys(phrases))
        return list(dict.fromkeys(m[0][0] for m in self.matcher.match(phrases, self.vocabulary) if m))

    def ground(self, frame: Frame, phrases: list[str], box_threshold: float | None = None) -> Segments:
        return self.client.call("grounder.ground", frame, list(phrases), box_threshold)

    def detect_all(self, frame: Frame) -> Segments:
        return self.client.call("grounder.detect_all", frame)


class RemoteAudioTextScorer(_RemoteTool):
    def score(self, audio: list[AudioSegment], texts: list[str]) -> np.ndarray:
        if not audio or not texts:
            return np.zeros((len(audio), len(texts)), np.float32)
        return self.client.call("scorer.score", list(audio), list(texts))

    def evidence(self, audio: list[AudioSegment], texts: list[str]) -> np.ndarray:
        """The served scorer's evidence term: its scores, or zeros when it is the lite one that reads
        the audio tags (``TagEmbeddingScorer.evidence``)."""
        if self.name == TagEmbeddingScorer.name:
            return np.zeros((len(audio), len(texts)), np.float32)
        return self.score(audio, texts)


class RemoteTextMatcher(_RemoteTool):
    def sound_sources(self, labels: list[str], vocabulary: list[str]) -> list[list[tuple[str, float]]]:
        return self.client.call("matcher.sound_sources", list(labels), list(vocabulary)) if labels else []

    def match(self, phrases: list[str], vocabulary: list[str]) -> list[list[tuple[str, float]]]:
        return self.client.call("matcher.match", list(phrases), list(vocabulary)) if phrases else []

    def covers(self, labels: list[str], vocabulary: list[str]) -> list[list[tuple[str, float]]]:
        return self.client.call("matcher.covers", list(labels), list(vocabulary)) if labels else []


class RemoteAudioCaptioner(_RemoteTool):
    def caption(self, audio: list[AudioSegment], prompts: list[str] | None = None) -> list[Captions]:
        return self.client.call("audio_captioner.caption", list(audio), prompts) if audio else []


class RemoteImageCaptioner(_RemoteTool):
    def caption(self, frames: list[Frame]) -> list[Captions]:
        return self.client.call("image_captioner.caption", list(frames)) if frames else []


class RemoteCropChecker(_RemoteTool):
    def check(self, frame: Frame, masks: np.ndarray, texts: list[str]) -> np.ndarray:
        return self.client.call("crop_checker.check", frame, masks, list(texts))


REMOTE_CLASSES: dict[str, type[_RemoteTool]] = {
    "tagger": RemoteAudioTagger,
    "grounder": RemoteGrounder,
    "scorer": RemoteAudioTextScorer,
    "matcher": RemoteTextMatcher,
    "audio_captioner": RemoteAudioCaptioner,
    "image_captioner": RemoteImageCaptioner,
    "crop_checker": RemoteCropChecker,
}


def client_from_settings(settings: ToolConfig) -> RemoteClient:
    serve = settings.serve
    return RemoteClient(
        settings.tools.backend,
        token=os.environ.get(TOKEN_ENV) or None,
        timeout_s=serve.request_timeout_s + 10.0,
        retries=serve.client_retries,
        backoff_s=serve.client_backoff_s,
    )


def build_remote_toolset(settings: ToolConfig) -> Any:
    """A ``tools.wiring.Toolset`` whose tools call the server at ``settings.tools.backend``."""
    from avs_agent.tools.wiring import Toolset

    client = client_from_settings(settings)
    info = client.info()
    served: dict[str, str] = info.get("tools") or {}
    missing = [t for t in wire.REQUIRED_TOOLS if t not in served]
    if missing:
        raise ToolServerError(
            f"tool server {client.base_url} serves {', '.join(served) or 'no tools'}; the agent also needs {', '.join(missing)} "
            f"(start it without --tools, or with --tools {','.join(wire.REQUIRED_TOOLS)})"
        )
    vocabulary = list(info.get("vocabulary") or [])
    closed = bool(info.get("closed_vocabulary"))
    tools = {t: REMOTE_CLASSES[t](client, served[t]) for t in wire.TOOLS if t in served and t != "grounder"}
    tools["grounder"] = RemoteGrounder(client, served["grounder"], closed, vocabulary, tools["matcher"])
    return Toolset(
        tagger=tools["tagger"],
        grounder=tools["grounder"],
        scorer=tools["scorer"],
        matcher=tools["matcher"],
        vocabulary=vocabulary,
        closed_vocabulary=closed,
        audio_captioner=tools.get("audio_captioner"),
        image_captioner=tools.get("image_captioner"),
        crop_checker=tools.get("crop_checker"),
        linker=InstanceTracker(fps=settings.media.fps),  # links the served detections here (no model)
    )
