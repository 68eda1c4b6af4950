"""`charrnn serve`'s HTTP side: an ASGI app (Starlette, run by uvicorn) with the OpenAI-compatible
completions endpoint, the model list, health, Prometheus metrics and the playground page. The
model lives in a serving.BatchEngine; this side validates requests, queues them and streams
their pieces back. Errors are OpenAI-style JSON ({"error": {"message", "type", "param",
"code"}}) with the right status, never a traceback.
"""

import asyncio
import hmac
import json
import math
import sys
import time
import uuid
from collections import Counter
from importlib import resources

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.responses import StreamingResponse
from starlette.routing import Route

from .options import MAX_SEED, OptionError, SampleOptions
from .serving import BatchEngine, Completion, Overloaded, ShuttingDown
from .stepper import start_ids
from .tokenizer import UnknownCharacters

MAX_BODY = 1 << 20  # bytes of a request body
OPEN_PATHS = ("/", "/health")  # answered without the API key
MAX_STOPS = 4  # as OpenAI's API
# A prompt is fed inside the batched steps, a character per step: this bounds the steps a
# request may take before it draws (the time: the Serving section of BENCHMARKS.md).
MAX_PROMPT = 4096
RETRY_AFTER_S = 1
# backpressure: a stream whose client has this many pieces not yet taken by the connection
# is paused (out of the batch) until its client has taken all but RESUME_BELOW of them
PAUSE_AT, RESUME_BELOW = 64, 8
# the engine's finish reasons for a stream it could not finish: (error type, HTTP status)
FAILED = {"shutdown": ("server_shutting_down", 503), "error": ("server_error", 500)}
_GONE = object()  # queued when a non-streamed request's client has gone away


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 kind: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.param, self.status, self.kind, self.code = param, status, kind, code


def error(message: str, status: int, param=None, kind="invalid_request_error", code=None,
          headers=None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param,
                                   "code": code}}, status_code=status, headers=headers)


def _number(body: dict, name: str, default, low: float, high: float, integer=False):
    value = body.get(name, default)
    if value is None:
        return default
    ok = type(value) is int if integer else type(value) in (int, float)
    if not ok or (not integer and not math.isfinite(value)) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise BadRequest(f"{name} must be {kind} from {low:g} to {high:g}", name)
    return value


class Server:
    """The app and what it counts. name: the model's name (what `model` may say)."""

    def __init__(self, engine: BatchEngine, name: str, max_tokens: int, api_key: str | None,
                 description: dict):
        self.engine, self.name, self.max_tokens = engine, name, max_tokens
        self.api_key, self.description = api_key, description
        self.created = int(time.time())
        self.statuses = Counter()  # responses by status code
        self.app = Starlette(routes=[
            Route("/", self.playground), Route("/health", self.health),
            Route("/metrics", self.metrics), Route("/v1/models", self.models),
            Route("/v1/completions", self.completions, methods=["POST"])],
            exception_handlers={HTTPException: _http_error})
        self.app.add_middleware(_Guard, server=self)

    # --- the endpoints -------------------------------------------------------------------------

    async def playground(self, request: Request) -> Response:
        page = resources.files("charrnn").joinpath("playground.html").read_text("utf-8")
        return HTMLResponse(page.replace("{{MODEL}}", self.name))

    async def health(self, request: Request) -> Response:
        if not self.engine.alive or self.engine.draining:
            state = "stopping" if self.engine.draining else "engine stopped"
            return JSONResponse({"status": state, "model": self.name}, status_code=503)
        return JSONResponse({"status": "ok", "model": self.name})

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": self.name, "object": "model", "created": self.created,
             "owned_by": "charrnn", **self.description}]})

    async def metrics(self, request: Request) -> Response:
        e = self.engine
        lines = ["# HELP charrnn_requests_total HTTP responses by status code.",
                 "# TYPE charrnn_requests_total counter"]
        lines += [f'charrnn_requests_total{{status="{code}"}} {n}'
                  for code, n in sorted(self.statuses.items())]
        lines += ["# HELP charrnn_active_slots Streams in the sampling batch now.",
                  "# TYPE charrnn_active_slots gauge", f"charrnn_active_slots {e.active}",
                  "# HELP charrnn_paused_streams Streams held out of the batch: their "
                  "clients read slower than they are made.",
                  "# TYPE charrnn_paused_streams gauge", f"charrnn_paused_streams {e.paused}",
                  "# HELP charrnn_waiting_requests Requests waiting for room in the batch.",
                  "# TYPE charrnn_waiting_requests gauge",
                  f"charrnn_waiting_requests {e.waiting}",
                  "# HELP charrnn_characters_generated_total Characters generated.",
                  "# TYPE charrnn_characters_generated_total counter",
                  f"charrnn_characters_generated_total {e.generated}"]
        return PlainTextResponse("\n".join(lines) + "\n",
                                 media_type="text/plain; version=0.0.4")

    async def completions(self, request: Request) -> Response:
        try:
            body = await _json_body(request)
            opts, n, stops, stream = self._parse(body)
        except BadRequest as e:
            return error(str(e), e.status, e.param, e.kind, e.code)
        prompt_chars = len(opts.prime)
        queue: asyncio.Queue = asyncio.Queue()

        def deliver(index: int, text: str, finish: str | None) -> None:  # on the event loop
            queue.put_nowait((index, text, finish))
            if stream and queue.qsize() >= PAUSE_AT and not job.paused:
                self.engine.pause(job)

        job = Completion(opts, n, stops, deliver)
        try:
            self.engine.submit(job)
        except Overloaded as e:
            return error(f"the server is busy: {e}; retry in a moment", 429,
                         kind="server_busy", headers={"Retry-After": str(RETRY_AFTER_S)})
        except ShuttingDown as e:
            return error(str(e), 503, kind="server_shutting_down",
                         headers={"Retry-After": str(RETRY_AFTER_S)})
        ident = f"cmpl-{uuid.uuid4().hex[:24]}"
        head = {"id": ident, "object": "text_completion", "created": int(time.time()),
                "model": self.name}
        if stream:
            return StreamingResponse(self._events(job, queue, head), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        # the client may go away while its completion is computed: a watcher waits for the
        # disconnect (the body is read, so the next message is http.disconnect) and withdraws
        # the request, so its slots do not run to max_tokens for no one
        watcher = asyncio.ensure_future(_disconnected(request))

        def gone(w: asyncio.Future) -> None:
            if not w.cancelled():  # (cancelled: the completion ended first)
                w.exception()  # a receive that failed: the client is as good as gone
                queue.put_nowait(_GONE)

        watcher.add_done_callback(gone)
        texts: list[list[str]] = [[] for _ in range(n)]
        reasons: list[str | None] = [None] * n
        try:
            while any(r is None for r in reasons):
                item = await queue.get()
                if item is _GONE:
                    self.engine.cancel(job)
                    return Response(status_code=499)  # nginx's "client closed request"
                index, text, finish = item
                if finish in FAILED:
                    self.engine.cancel(job)
                    return _failure(finish, text)
                texts[index].append(text)
                reasons[index] = finish
        except asyncio.CancelledError:
            self.engine.cancel(job)
            raise
        finally:
            watcher.cancel()
        joined = ["".join(t) for t in texts]
        generated = sum(map(len, joined))
        return JSONResponse({**head, "choices": [
            {"text": t, "index": i, "logprobs": None, "finish_reason": r}
            for i, (t, r) in enumerate(zip(joined, reasons))],
            "usage": {"prompt_tokens": prompt_chars, "completion_tokens": generated,
                      "total_tokens": prompt_chars + generated}})

    async def _events(self, job: Completion, queue: asyncio.Queue, head: dict):
        """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`. A client
        that goes away cancels the generator, and with it the request's streams. A stream the
        server could not finish (it is stopping, or the batch failed) is an error event, as
        OpenAI's API sends one mid-stream (its client libraries raise it)."""
        left = job.n
        try:
            while left:
                index, text, finish = await queue.get()
                if job.paused and queue.qsize() < RESUME_BELOW:
                    self.engine.pause(job, False)
                if finish in FAILED:
                    kind, _ = FAILED[finish]
                    event = {"error": {"message": text, "type": kind, "param": None,
                                       "code": None}}
                    yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
                    break
                if finish is not None:
                    left -= 1
                if text or finish is not None:
                    chunk = {**head, "choices": [{"text": text, "index": index,
                                                  "logprobs": None, "finish_reason": finish}]}
                    yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            self.engine.cancel(job)  # a finished request is not in the batch: nothing to do

    # --- validation ----------------------------------------------------------------------------

    def _parse(self, body) -> tuple[SampleOptions, int, tuple[str, ...], bool]:
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        model = body.get("model")
        if model is not None and model != self.name:
            raise BadRequest(f"the model {model!r} is not served here; this server serves "
                             f"{self.name!r}", "model", 404, code="model_not_found")
        prompt = body.get("prompt", "")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]  # OpenAI clients may send one prompt as a list
        if not isinstance(prompt, str):
            raise BadRequest("prompt must be a string", "prompt")
        if len(prompt) > MAX_PROMPT:
            raise BadRequest(f"prompt is {len(prompt):,} characters; this server reads at most "
                             f"{MAX_PROMPT:,}", "prompt", code="prompt_too_long")
        stop = body.get("stop")
        stops = (stop,) if isinstance(stop, str) else stop if stop is not None else ()
        if not isinstance(stops, (list, tuple)) or len(stops) > MAX_STOPS or \
                not all(isinstance(s, str) and s for s in stops):
            raise BadRequest(f"stop must be a non-empty string or a list of at most "
                             f"{MAX_STOPS} of them", "stop")
        for flag in ("stream", "skip_unknown", "echo"):
            if body.get(flag) is not None and type(body[flag]) is not bool:
                raise BadRequest(f"{flag} must be true or false", flag)
        if body.get("echo"):
            raise BadRequest("echo is not supported", "echo")
        skip = bool(body.get("skip_unknown"))
        max_tokens = _number(body, "max_tokens", 16, 1, self.max_tokens, integer=True)
        n = _number(body, "n", 1, 1, self.engine.max_batch, integer=True)
        top_p = _number(body, "top_p", 1.0, 0, 1)
        if top_p == 0:  # checked here, not by SampleOptions: its message names --top-p
            raise BadRequest("top_p must be a number above 0, at most 1", "top_p")
        try:
            opts = SampleOptions(
                length=max_tokens, prime=prompt, skip_unknown=skip, top_p=top_p,
                temperature=_number(body, "temperature", 1.0, 0, 100),
                top_k=_number(body, "top_k", None, 1, 1 << 31, integer=True),
                seed=_number(body, "seed", None, 0, MAX_SEED, integer=True))
        except OptionError as e:  # a last guard: every value is checked above
            raise BadRequest(str(e)) from None
        try:
            start_ids(self.engine.vocab, prompt, skip)
        except UnknownCharacters as e:
            raise BadRequest(f"{e}; send skip_unknown: true to drop them", "prompt",
                             code="unknown_characters") from None
        return opts, n, tuple(stops), bool(body.get("stream"))


async def _http_error(request: Request, e: HTTPException) -> Response:
    """Starlette's own refusals (no such path, a method the path does not take) in the API's
    JSON error format, as every other error."""
    kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
    return error(f"{request.method} {request.url.path}: {e.detail}", e.status_code, kind=kind,
                 headers=e.headers)


def _failure(finish: str, message: str) -> JSONResponse:
    kind, status = FAILED[finish]
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return error(message, status, kind=kind, headers=headers)


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone away (after the body has been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _json_body(request: Request):
    """The body as JSON, at most MAX_BODY bytes (refused before it is all read)."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        raise BadRequest(f"the body is larger than {MAX_BODY:,} bytes", status=413)
    data = bytearray()
    async for block in request.stream():
        data += block
        if len(data) > MAX_BODY:
            raise BadRequest(f"the body is larger than {MAX_BODY:,} bytes", status=413)
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"the body is not valid JSON: {e}") from None


class _Guard:
    """Pure ASGI middleware: the API key (every path but /health), counting responses by status,
    and a last resort turning any exception into a 500 JSON error (never a traceback)."""

    def __init__(self, app, server: Server):
        self.app, self.server = app, server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False
        status = 500

        async def counted(message):
            nonlocal started, status
            if message["type"] == "http.response.start":
                started, status = True, message["status"]
            await send(message)

        key = self.server.api_key
        try:
            # the page and the health check are open: the page holds no data, and it asks for
            # the key to send with its API calls
            if key and scope["path"] not in OPEN_PATHS and not _authorized(scope, key):
                response = error("a valid API key is needed: Authorization: Bearer KEY", 401,
                                 kind="authentication_error", code="invalid_api_key")
                await response(scope, receive, counted)
            else:
                await self.app(scope, receive, counted)
        except Exception as e:  # noqa: BLE001 - the last resort: a JSON error, not a traceback
            print(f"charrnn serve: {scope['method']} {scope['path']} failed: "
                  f"{type(e).__name__}: {e}", file=sys.stderr)
            if not started:
                await error("internal error", 500, kind="server_error")(scope, receive, counted)
        except asyncio.CancelledError:
            # uvicorn cancels what is still running when the shutdown's grace is over (a
            # client that stopped reading its stream): that is the end, not an error to log
            # with a traceback; anything else cancelled goes on being cancelled
            if not self.server.engine.draining:
                raise
        finally:
            self.server.statuses[status] += 1


def _authorized(scope, key: str) -> bool:
    # compared as bytes: the header's bytes are what the client sent (a key with non-ASCII
    # characters comes as UTF-8), and compare_digest takes its time from the given length only
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            return value.startswith(b"Bearer ") and hmac.compare_digest(
                value[len(b"Bearer "):], key.encode("utf-8"))
    return False
