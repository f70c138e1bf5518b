"""Local fake LLM servers speaking the OpenAI chat-completions and Ollama /api/chat protocols over real
HTTP on 127.0.0.1, answering from a script. The real client classes (ChatOpenAI, ChatOllama) talk to them.

Script items (used in order; the last one repeats):
    {"json": obj}            answer with obj as the message content (structured output as JSON)
    {"tool": obj}            answer with a tool call whose arguments are obj (function-calling structured output)
    {"content": "text"}      answer with free text (garbage for structured output)
    {"status": 429}          an HTTP error status
    {"sleep": seconds}       wait before answering (to provoke client timeouts), then answer the next item
    {"reply": fn}            answer with fn(request body) as the content (a scripted model that reads the
                             request, e.g. the numbered boxes' legend of a vision prompt)

``user_text`` and ``images`` read a request the way each protocol carries it (OpenAI: content parts
with base64 data URLs; Ollama: the message's ``images`` list).
"""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _QuietServer(ThreadingHTTPServer):
    """A client that gave up (a timeout test) leaves the handler writing to a closed socket, after the
    test may have ended: socketserver would print that traceback to whatever sys.stderr is then, such as
    another test's captured stderr. A dropped connection is expected here, so it prints nothing; any
    other handler error still does."""

    def handle_error(self, request, client_address) -> None:
        import sys

        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)):
            return
        super().handle_error(request, client_address)


class FakeLLMServer:
    def __init__(self, protocol: str, script: list[dict], refuse: tuple[str, ...] = ()):
        """``refuse``: response_format types answered with HTTP 500 as llama.cpp's server does for
        'json_schema' (without using a script item)."""
        assert protocol in ("openai", "ollama")
        self.protocol = protocol
        self.refuse = refuse
        self.script = list(script)
        self.requests: list[dict] = []
        self._i = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                kind = (body.get("response_format") or {}).get("type")
                if kind in server.refuse:
                    with server._lock:
                        server.requests.append(
                            {"path": self.path, "body": body, "headers": dict(self.headers), "refused": True}
                        )
                    payload = json.dumps(
                        {
                            "error": {
                                "message": "response_format type must be one of 'text', 'json_object'",
                                "type": "server_error",
                            }
                        }
                    ).encode()
                    self.send_response(500)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                with server._lock:
                    server.requests.append({"path": self.path, "body": body, "headers": dict(self.headers)})
                    item = server._next()
                if "sleep" in item:
                    time.sleep(item["sleep"])
                    with server._lock:
                        item = server._next()
                if "reply" in item:
                    item = {"json": item["reply"](body)}
                if "status" in item:
                    payload = json.dumps(
                        {
                            "error": {
                                "message": "scripted error",
                                "type": "rate_limit" if item["status"] == 429 else "server",
                            }
                        }
                    ).encode()
                    self.send_response(item["status"])
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if server.protocol == "openai":
                    self._openai(body, item)
                else:
                    self._ollama(body, item)

            def _openai(self, body, item):
                message: dict = {"role": "assistant", "content": None}
                if "tool" in item:
                    tools = body.get("tools") or [{"function": {"name": "answer"}}]
                    message["tool_calls"] = [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {
                                "name": tools[0]["function"]["name"],
                                "arguments": json.dumps(item["tool"]),
                            },
                        }
                    ]
                    finish = "tool_calls"
                else:
                    message["content"] = (
                        json.dumps(item["json"]) if "json" in item else item.get("content", "")
                    )
                    finish = "stop"
                payload = json.dumps(
                    {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body.get("model", "fake"),
                        "choices": [
                            {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
                        ],
                        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _ollama(self, body, item):
                if "tool" in item:
                    message = {
                        "role": "assistant",
                        "content": "",
                        "tool_calls": [
                            {
                                "function": {
                                    "name": (body.get("tools") or [{"function": {"name": "answer"}}])[0][
                                        "function"
                                    ]["name"],
                                    "arguments": item["tool"],
                                }
                            }
                        ],
                    }
                else:
                    message = {
                        "role": "assistant",
                        "content": json.dumps(item["json"]) if "json" in item else item.get("content", ""),
                    }
                now = "2026-11-22T00:00:00Z"
                final = {
                    "model": body.get("model", "fake"),
                    "created_at": now,
                    "message": {"role": "assistant", "content": ""},
                    "done": True,
                    "done_reason": "stop",
                    "total_duration": 1,
                    "prompt_eval_count": 90,
                    "eval_count": 30,
                }
                if body.get("stream", True):
                    lines = [
                        {
                            "model": body.get("model", "fake"),
                            "created_at": now,
                            "message": message,
                            "done": False,
                        },
                        final,
                    ]
                    payload = "".join(json.dumps(x) + "\n" for x in lines).encode()
                    ctype = "application/x-ndjson"
                else:
                    payload = json.dumps(final | {"message": message}).encode()
                    ctype = "application/json"
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _next(self) -> dict:
        item = self.script[min(self._i, len(self.script) - 1)]
        self._i += 1
        return item

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}" + ("/v1" if self.protocol == "openai" else "")

    def __enter__(self) -> FakeLLMServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def user_text(body: dict) -> str:
    """The text of a request's last user message (either protocol)."""
    msg = [m for m in body["messages"] if m["role"] == "user"][-1]
    content = msg["content"]
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if p.get("type") == "text")
    return content


def images(body: dict) -> list:
    """The images of a request's first user message, decoded (PIL images), either protocol."""
    from PIL import Image

    msg = next(m for m in body["messages"] if m["role"] == "user")
    if isinstance(msg.get("content"), list):
        raw = [p["image_url"]["url"].split(",", 1)[1] for p in msg["content"] if p.get("type") == "image_url"]
    else:
        raw = list(msg.get("images") or [])
    return [Image.open(io.BytesIO(base64.b64decode(b))) for b in raw]


def legend(body: dict) -> dict[int, list[tuple[int, str]]]:
    """A vision prompt's numbered boxes: frame -> [(number, phrase)]."""
    out: dict[int, list[tuple[int, str]]] = {}
    for line in user_text(body).splitlines():
        m = re.match(r"frame (\d+): (.*)$", line)
        if m and ("box " in m.group(2) or m.group(2) == "no boxes"):
            out[int(m.group(1))] = [(int(n), ph) for n, ph in re.findall(r"box (\d+) = ([^,]+)", m.group(2))]
    return out


def sent_schema(body: dict) -> tuple[str, dict]:
    """How a request asked for structure, and the JSON schema it sent: ('json_schema', ...) for
    OpenAI's response_format (``strict`` in ``body['response_format']['json_schema']``),
    ('json_object', ...) for llama.cpp's, ('format', ...) for Ollama's, ('tool', ...) for a tool's
    parameters."""
    rf = body.get("response_format") or {}
    if rf.get("type") == "json_schema":
        return "json_schema", rf["json_schema"]["schema"]
    if rf.get("type") == "json_object" and "schema" in rf:
        return "json_object", rf["schema"]
    if isinstance(body.get("format"), dict):
        return "format", body["format"]
    if body.get("tools"):
        return "tool", body["tools"][0]["function"]["parameters"]
    raise AssertionError(f"no schema in the request: {sorted(body)}")


def menu_answer(body: dict) -> dict:
    """A valid answer to whatever schema a request sent, as a model that keeps to the menu: each enum
    field its first entry (the best-ranked candidate), arrays empty, strings a word."""
    _, schema = sent_schema(body)
    out: dict = {}
    for key, prop in schema.get("properties", {}).items():
        if "enum" in prop:
            out[key] = prop["enum"][0]
        elif prop.get("type") == "array":
            out[key] = []
        else:
            out[key] = "scripted"
    return out
