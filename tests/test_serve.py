"""`charrnn serve` as a user runs it: a real server process on a free loopback port
(`--port 0`), talked to over HTTP by the standard library's client and by OpenAI's client
library, as other programs would.

One tiny model is trained once per module (a real `charrnn train`), and one server is started
for most tests; the tests that need other flags (a small queue, an API key) or that end the
server (signals) start their own. Every server is ended by a finalizer. Only 127.0.0.1 is ever
contacted; every loop is bounded in count and in time.
"""

import concurrent.futures
import http.client
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from charrnn.synthetic import MarkovSource

from .served import START_TIMEOUT, STOP_TIMEOUT, Served

HOST = "127.0.0.1"
NAME = "tinymodel"  # the run directory's name: the model's name in the API
ALPHABET = "abcé \n"  # a two-byte letter: usage must count characters, not bytes
VOCAB = set(ALPHABET)
TRAIN_ARGS = ["--cell", "lstm", "--hidden", "16", "--layers", "1", "--batch-size", "4",
              "--seq-len", "16", "--max-steps", "20", "--eval-every", "10"]
LONG = 100_000_000  # the shared server's --max-tokens: a stream this long runs for minutes
HTTP_TIMEOUT = 30  # s, for one socket operation
MAX_BODY = 1 << 20  # server.MAX_BODY; not imported: this file needs no starlette
MAX_BATCH = 64  # the default --max-batch


# ---------------------------------------------------------------------------------------------
# the model, the server process, the client


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny model trained by a real `charrnn train` subprocess."""
    work = tmp_path_factory.mktemp("serve-work")
    env = {**os.environ, "NO_COLOR": "1",
           "CHARRNN_STATE_DIR": str(tmp_path_factory.mktemp("serve-state"))}
    env.pop("CHARRNN_API_KEY", None)  # the user's key must not lock the shared server
    text = MarkovSource(alphabet=ALPHABET, order=2, seed=0).sample_text(5000)
    (work / "corpus.txt").write_text(text, encoding="utf-8")
    p = subprocess.run([sys.executable, "-m", "charrnn", "train", "corpus.txt", *TRAIN_ARGS,
                        "--out", NAME], cwd=work, env=env, capture_output=True,
                       timeout=START_TIMEOUT)
    assert p.returncode == 0, p.stderr.decode()
    return SimpleNamespace(run=work / NAME, env=env, work=work)


@pytest.fixture
def serve(model, request):
    """Start a server of one's own: serve(*flags, env=None); stopped when the test ends."""
    def start(*flags, env=None) -> Served:
        served = Served(model, *flags, env=env)
        request.addfinalizer(served.stop)
        return served
    return start


@pytest.fixture(scope="module")
def server(model):
    """The server most tests share."""
    served = Served(model, "--max-tokens", str(LONG))
    yield served
    served.stop()


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def json(self):
        assert self.headers.get_content_type() == "application/json", self.headers
        return json.loads(self.body)


def call(port: int, method: str, path: str, body=None, headers=None) -> Reply:
    """One request on a new connection; body: a dict (sent as JSON), bytes, or None."""
    conn = http.client.HTTPConnection(HOST, port, timeout=HTTP_TIMEOUT)
    try:
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        sent = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers={**sent, **(headers or {})})
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


def complete(port: int, **body) -> dict:
    reply = call(port, "POST", "/v1/completions", body)
    assert reply.status == 200, reply.body
    return reply.json


def open_stream(port: int, **body) -> tuple[http.client.HTTPConnection,
                                             http.client.HTTPResponse]:
    conn = http.client.HTTPConnection(HOST, port, timeout=HTTP_TIMEOUT)
    conn.request("POST", "/v1/completions", body=json.dumps({**body, "stream": True}),
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200, response.read()
    assert response.headers.get_content_type() == "text/event-stream"
    return conn, response


def read_events(response, limit_s: float = 60, count: int | None = None) -> list[str]:
    """The `data:` payloads of server-sent events until the stream ends (or `count` of them),
    within limit_s seconds."""
    events: list[str] = []
    deadline = time.monotonic() + limit_s
    while count is None or len(events) < count:
        assert time.monotonic() < deadline, f"the stream did not end in {limit_s} s"
        line = response.readline()
        if not line:
            break
        line = line.decode("utf-8").rstrip("\r\n")
        if line:
            assert line.startswith("data: "), line
            events.append(line[len("data: "):])
    return events


def stream(port: int, **body) -> list[str]:
    conn, response = open_stream(port, **body)
    try:
        return read_events(response)
    finally:
        conn.close()


def choices_of(events: list[str], n: int = 1) -> tuple[list[str], list[list[dict]]]:
    """Each choice's text and its chunks, from a whole stream (checked: it ends with [DONE],
    every other event is a chunk in OpenAI's format)."""
    assert events and events[-1] == "[DONE]", events[-3:]
    chunks = [json.loads(e) for e in events[:-1]]
    assert len({c["id"] for c in chunks}) == 1, "one id for all of a completion's chunks"
    per_choice: list[list[dict]] = [[] for _ in range(n)]
    for c in chunks:
        assert c["id"].startswith("cmpl-") and c["object"] == "text_completion"
        assert c["model"] == NAME and isinstance(c["created"], int)
        [choice] = c["choices"]
        per_choice[choice["index"]].append(choice)
    return ["".join(c["text"] for c in cs) for cs in per_choice], per_choice


def metrics(port: int, headers=None) -> dict[str, float]:
    reply = call(port, "GET", "/metrics", headers=headers)
    assert reply.status == 200, reply.body
    values = {}
    for line in reply.body.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def wait_for_metric(port: int, name: str, wanted, limit_s: float) -> float:
    """Poll /metrics until wanted(value of name) (bounded by limit_s); the last value."""
    deadline = time.monotonic() + limit_s
    while True:
        value = metrics(port).get(name, 0)
        if wanted(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def cli_sample(model, prime: str, length: int, seed: int) -> str:
    """What `charrnn sample --seed` writes after the prime: an independent path to the text."""
    p = subprocess.run([sys.executable, "-m", "charrnn", "sample", str(model.run), "--prime",
                        prime, "--length", str(length), "--seed", str(seed)],
                       capture_output=True, env=model.env, timeout=START_TIMEOUT)
    assert p.returncode == 0, p.stderr.decode()
    out = p.stdout.decode("utf-8")
    assert out.startswith(prime), out
    return out[len(prime):]


# ---------------------------------------------------------------------------------------------
# completions


def test_plain_completion_is_openai_shaped_and_is_what_charrnn_sample_writes(model, server):
    prime, length, seed = "é a", 60, 11
    reply = call(server.port, "POST", "/v1/completions",
                 {"model": NAME, "prompt": prime, "max_tokens": length, "seed": seed})
    assert reply.status == 200, reply.body
    body = reply.json
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    assert body["model"] == NAME and isinstance(body["created"], int)
    [choice] = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "length"
    assert choice["logprobs"] is None
    assert choice["text"] == cli_sample(model, prime, length, seed)
    # characters, not bytes: the prime has a two-byte letter
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": length,
                             "total_tokens": 3 + length}
    assert len(choice["text"]) == length


def test_no_seed_draws_anew(server):
    texts = {complete(server.port, prompt="a", max_tokens=40)["choices"][0]["text"]
             for _ in range(3)}
    assert len(texts) > 1, "requests without a seed must not repeat one another"


def test_stream_is_openai_chunks_ending_with_done_and_the_plain_text(server):
    body = {"prompt": "ab", "max_tokens": 100, "seed": 5, "n": 2}
    plain = [c["text"] for c in complete(server.port, **body)["choices"]]
    texts, chunks = choices_of(stream(server.port, **body), n=2)
    assert texts == plain
    for pieces in chunks:
        # streamed in pieces as they are drawn, not the whole text at the end
        assert len(pieces) >= 2, pieces
        assert [p["finish_reason"] for p in pieces] == [None] * (len(pieces) - 1) + ["length"]


def test_n_choices_differ_and_the_first_is_the_single_completion(server):
    one = complete(server.port, prompt="b", max_tokens=40, seed=9)
    three = complete(server.port, prompt="b", max_tokens=40, seed=9, n=3)
    texts = [c["text"] for c in three["choices"]]
    assert [c["index"] for c in three["choices"]] == [0, 1, 2]
    assert texts[0] == one["choices"][0]["text"]
    assert len(set(texts)) == 3, texts
    assert three["usage"]["completion_tokens"] == 120


def test_stop_strings_end_the_text_before_the_first_of_them(server):
    whole = complete(server.port, prompt="a", max_tokens=200, seed=21)["choices"][0]["text"]
    one = whole[30:33]  # three characters: a stop may straddle the chunks the text comes in
    two = [whole[90:92], whole[45:47]]
    for stop in (one, two):
        stops = [stop] if isinstance(stop, str) else stop
        cut = min(whole.find(s) for s in stops)
        for streamed in (False, True):
            body = {"prompt": "a", "max_tokens": 200, "seed": 21, "stop": stop}
            if streamed:
                [text], [pieces] = choices_of(stream(server.port, **body))
                reason = pieces[-1]["finish_reason"]
            else:
                [choice] = complete(server.port, **body)["choices"]
                text, reason = choice["text"], choice["finish_reason"]
            assert (text, reason) == (whole[:cut], "stop"), (stop, streamed)
    # a stop string that never appears ends nothing
    [choice] = complete(server.port, prompt="a", max_tokens=50, seed=21, stop="zz")["choices"]
    assert (choice["text"], choice["finish_reason"]) == (whole[:50], "length")


def test_64_concurrent_streams_all_complete_with_valid_text(server):
    clients = 64
    start = threading.Barrier(clients, timeout=HTTP_TIMEOUT)

    def one(i: int) -> tuple[str, str]:
        body = {"prompt": "ab", "max_tokens": 300, "seed": i}
        if i % 2:
            body["stop"] = "\n"
        start.wait()  # all 64 at once: they share the batch
        [text], [pieces] = choices_of(stream(server.port, **body))
        return text, pieces[-1]["finish_reason"]

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(one, i) for i in range(clients)]
        done, late = concurrent.futures.wait(futures, timeout=120)
        assert not late, f"{len(late)} of {clients} streams did not end in 120 s"
    for i, future in enumerate(futures):
        text, reason = future.result()
        assert set(text) <= VOCAB, text
        if reason == "length":
            assert len(text) == 300 and (i % 2 == 0 or "\n" not in text), (i, text)
        else:
            assert reason == "stop" and i % 2 and "\n" not in text and len(text) < 300
    assert wait_for_metric(server.port, "charrnn_active_slots", lambda v: v == 0, 5) == 0


@pytest.mark.parametrize("streamed", [True, False], ids=["stream", "plain"])
def test_a_client_that_goes_away_frees_its_slot(server, streamed):
    body = json.dumps({"prompt": "a", "max_tokens": LONG, "stream": streamed}).encode()
    sock = socket.create_connection((HOST, server.port), timeout=HTTP_TIMEOUT)
    try:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        if streamed:  # the stream has begun: its first event has come
            got = b""
            for _ in range(100):
                got += sock.recv(4096)
                if b"data: " in got:
                    break
            assert b"data: " in got, got
        # LONG characters take minutes: the request is in the batch until it is withdrawn
        active = wait_for_metric(server.port, "charrnn_active_slots", lambda v: v >= 1, 10)
        assert active == 1
    finally:
        sock.close()
    active = wait_for_metric(server.port, "charrnn_active_slots", lambda v: v == 0, 5)
    assert active == 0, "the slot of a client that went away is still in the batch"
    server.assert_no_traceback()


class SmallWindow(http.client.HTTPConnection):
    """A connection whose socket takes little before the server must wait: a slow reader."""

    def connect(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(self.timeout)
        self.sock.connect((self.host, self.port))


def test_a_client_that_stops_reading_is_paused_and_resumes_where_it_left_off(model, serve):
    """Backpressure: a stream whose client does not read is taken out of the batch once its
    unsent pieces pile up (it makes no more text, its memory stops growing), and goes on when
    the client reads again: its text is still what `charrnn sample --seed` writes."""
    served = serve("--max-tokens", str(LONG))
    conn = SmallWindow(HOST, served.port, timeout=HTTP_TIMEOUT)
    try:
        conn.request("POST", "/v1/completions", headers={"Content-Type": "application/json"},
                     body=json.dumps({"prompt": "a", "max_tokens": LONG, "seed": 5,
                                      "stream": True}))
        response = conn.getresponse()
        assert response.status == 200
        paused = wait_for_metric(served.port, "charrnn_paused_streams", lambda v: v == 1, 60)
        assert paused == 1, "a stream nobody reads was not paused"
        made = metrics(served.port)["charrnn_characters_generated_total"]
        time.sleep(0.5)
        now = metrics(served.port)
        assert now["charrnn_characters_generated_total"] == made, "text made while paused"
        assert now["charrnn_active_slots"] == 1, "a paused stream keeps its place"
        # read again: past what was made before the pause, and on
        text, deadline = "", time.monotonic() + 60
        while len(text) < made + 3000:
            assert time.monotonic() < deadline, "the stream did not go on"
            [event] = read_events(response, count=1)
            text += json.loads(event)["choices"][0]["text"]
        # (text past `made` was made after the pause: the stream was resumed; whether it is
        # paused again now, its reader having stopped, is a race not worth asserting)
    finally:
        conn.close()
    assert text == cli_sample(model, "a", len(text), 5)
    assert wait_for_metric(served.port, "charrnn_active_slots", lambda v: v == 0, 5) == 0
    served.assert_no_traceback()


# ---------------------------------------------------------------------------------------------
# bad input: an OpenAI-style JSON error with the right status, never a traceback


BAD = [  # (id, body, status, param, a word the message must have)
    ("malformed", b'{"prompt": "ab",', 400, None, "JSON"),
    ("not-utf8", b'\xff\xfe{}', 400, None, "JSON"),
    ("not-an-object", b'[1, 2]', 400, None, "object"),
    ("prompt-number", {"prompt": 5}, 400, "prompt", "prompt"),
    ("prompts", {"prompt": ["a", "b"]}, 400, "prompt", "prompt"),
    ("max-tokens-string", {"max_tokens": "10"}, 400, "max_tokens", "max_tokens"),
    ("max-tokens-float", {"max_tokens": 1.5}, 400, "max_tokens", "max_tokens"),
    ("max-tokens-bool", {"max_tokens": True}, 400, "max_tokens", "max_tokens"),
    ("max-tokens-0", {"max_tokens": 0}, 400, "max_tokens", "max_tokens"),
    ("max-tokens-over", {"max_tokens": LONG + 1}, 400, "max_tokens", f"{LONG:g}"),
    ("temperature-negative", {"temperature": -1}, 400, "temperature", "temperature"),
    ("temperature-nan", b'{"temperature": NaN}', 400, "temperature", "temperature"),
    ("temperature-string", {"temperature": "hot"}, 400, "temperature", "temperature"),
    ("top-p-2", {"top_p": 2}, 400, "top_p", "top_p"),
    ("top-p-0", {"top_p": 0}, 400, "top_p", "top_p"),
    ("top-k-0", {"top_k": 0}, 400, "top_k", "top_k"),
    ("n-0", {"n": 0}, 400, "n", "n"),
    ("n-over-batch", {"n": MAX_BATCH + 1}, 400, "n", f"{MAX_BATCH}"),
    ("seed-negative", {"seed": -1}, 400, "seed", "seed"),
    ("stream-string", {"stream": "yes"}, 400, "stream", "stream"),
    ("stop-number", {"stop": 5}, 400, "stop", "stop"),
    ("stop-empty", {"stop": [""]}, 400, "stop", "stop"),
    ("stop-five", {"stop": list("abcé ")}, 400, "stop", "stop"),
    ("skip-unknown-string", {"skip_unknown": "yes"}, 400, "skip_unknown", "skip_unknown"),
    ("unknown-characters", {"prompt": "abz"}, 400, "prompt", "'z'"),
    ("prompt-too-long", {"prompt": "ab" * 2049}, 400, "prompt", "4,096"),
    ("other-model", {"model": "gpt-4"}, 404, "model", "gpt-4"),
]


@pytest.mark.parametrize("body, status, param, mention", [case[1:] for case in BAD],
                         ids=[case[0] for case in BAD])
def test_bad_input_is_an_openai_error(server, body, status, param, mention):
    reply = call(server.port, "POST", "/v1/completions", body)
    assert reply.status == status, reply.body
    error = reply.json["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["param"] == param and mention in error["message"], error
    server.assert_no_traceback()


def test_unknown_prompt_characters_are_dropped_when_asked(server):
    error = call(server.port, "POST", "/v1/completions", {"prompt": "azb"}).json["error"]
    assert error["code"] == "unknown_characters"
    with_skip = complete(server.port, prompt="azb", max_tokens=30, seed=4, skip_unknown=True)
    without = complete(server.port, prompt="ab", max_tokens=30, seed=4)
    assert with_skip["choices"][0]["text"] == without["choices"][0]["text"]
    assert with_skip["usage"]["prompt_tokens"] == 3, "the prompt's characters, as sent"


def raw_status(port: int, head: bytes, body: bytes) -> int:
    """The status of a request written byte for byte on a fresh connection."""
    with socket.create_connection((HOST, port), timeout=HTTP_TIMEOUT) as sock:
        try:
            sock.sendall(head + body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may refuse before it has read it all: its answer is read below
        data = b""
        deadline = time.monotonic() + HTTP_TIMEOUT
        while b"\r\n" not in data and time.monotonic() < deadline:
            got = sock.recv(4096)
            if not got:
                break
            data += got
    return int(data.split(b" ", 2)[1])


def test_a_body_said_to_be_too_large_is_refused_before_it_is_read(server):
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (MAX_BODY + 1))
    # only the start is sent: the answer must not wait for the rest
    assert raw_status(server.port, head, b'{"prompt": "') == 413
    server.assert_no_traceback()


def test_a_chunked_body_too_large_is_refused(server):
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    block = b"a" * (1 << 16)
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(block), block)
                      for _ in range(MAX_BODY // len(block) + 1))
    assert raw_status(server.port, head, chunks + b"0\r\n\r\n") == 413
    server.assert_no_traceback()


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/v1/completions", 405), ("POST", "/v1/models", 405),
    ("GET", "/v1/chat/completions", 404), ("GET", "/../../etc/passwd", 404)])
def test_wrong_method_or_path_is_a_json_error(server, method, path, status):
    reply = call(server.port, method, path, b"{}" if method == "POST" else None)
    assert reply.status == status
    assert set(reply.json["error"]) == {"message", "type", "param", "code"}


def test_the_engine_serves_on_after_bad_input(server):
    for case in BAD[:3]:
        call(server.port, "POST", "/v1/completions", case[1])
    assert len(complete(server.port, prompt="a", max_tokens=20)["choices"][0]["text"]) == 20
    server.assert_no_traceback()


def test_more_waiting_requests_than_the_queue_holds_are_told_to_retry(serve):
    served = serve("--max-batch", "1", "--max-waiting", "1", "--max-tokens", str(LONG))
    first = open_stream(served.port, prompt="a", max_tokens=LONG)
    conns = [first[0]]
    try:
        read_events(first[1], count=1)
        assert metrics(served.port)["charrnn_active_slots"] == 1  # the batch is full
        second = open_stream(served.port, prompt="a", max_tokens=LONG)  # waits for room
        conns.append(second[0])
        assert wait_for_metric(served.port, "charrnn_waiting_requests",
                               lambda v: v == 1, 5) == 1
        reply = call(served.port, "POST", "/v1/completions", {"prompt": "a", "max_tokens": 5})
        assert reply.status == 429, reply.body
        assert int(reply.headers["Retry-After"]) >= 1
        assert reply.json["error"]["type"] and reply.json["error"]["message"]
    finally:
        for conn in conns:
            conn.close()
    # both clients gone (one running, one waiting): the queue and the batch empty, and the
    # engine answers the next request
    assert wait_for_metric(served.port, "charrnn_active_slots", lambda v: v == 0, 5) == 0
    assert metrics(served.port)["charrnn_waiting_requests"] == 0
    assert len(complete(served.port, prompt="a", max_tokens=7)["choices"][0]["text"]) == 7
    assert 'charrnn_requests_total{status="429"}' in metrics(served.port)
    served.assert_no_traceback()


# ---------------------------------------------------------------------------------------------
# the API key


@pytest.mark.parametrize("given", ["option", "environment"])
def test_an_api_key_guards_every_endpoint_but_health_and_the_page(model, serve, given):
    key = "s3cret-ké"  # a non-ASCII character: sent as UTF-8
    if given == "option":
        served = serve("--api-key", key)
    else:
        served = serve(env={**model.env, "CHARRNN_API_KEY": key})
    assert "API key required" in served.stderr
    requests = [("POST", "/v1/completions", {"prompt": "a", "max_tokens": 5}),
                ("GET", "/v1/models", None), ("GET", "/metrics", None)]
    right = {"Authorization": b"Bearer " + key.encode()}
    for method, path, body in requests:
        for headers in (None, {"Authorization": "Bearer wrong"},
                        {"Authorization": b"Bearer " + key.encode()[:-1]},
                        {"Authorization": b"Basic " + key.encode()}):
            reply = call(served.port, method, path, body, headers)
            assert reply.status == 401, (path, headers)
            assert reply.json["error"]["code"] == "invalid_api_key"
        assert call(served.port, method, path, body, right).status == 200, path
    assert call(served.port, "GET", "/health").status == 200
    # the playground page is open (it holds no data); it sends the key with its API calls
    assert call(served.port, "GET", "/").status == 200
    served.assert_no_traceback()


# ---------------------------------------------------------------------------------------------
# the other endpoints


def test_models_health_metrics_and_playground(server):
    models = call(server.port, "GET", "/v1/models").json
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [NAME]
    assert models["data"][0]["object"] == "model"

    health = call(server.port, "GET", "/health")
    assert health.status == 200 and health.json["status"] == "ok"

    before = metrics(server.port)
    call(server.port, "POST", "/v1/completions", {"n": 0})
    complete(server.port, prompt="a", max_tokens=37, n=2)
    reply = call(server.port, "GET", "/metrics")
    assert reply.headers.get_content_type() == "text/plain"
    after = metrics(server.port)
    ok, bad = 'charrnn_requests_total{status="200"}', 'charrnn_requests_total{status="400"}'
    assert after[ok] >= before.get(ok, 0) + 2  # the completion and the /metrics before it
    assert after[bad] == before.get(bad, 0) + 1
    generated = "charrnn_characters_generated_total"
    assert after[generated] == before[generated] + 74
    assert after["charrnn_active_slots"] == 0

    page = call(server.port, "GET", "/")
    assert page.status == 200 and page.headers.get_content_type() == "text/html"
    assert NAME in page.body.decode("utf-8") and "/v1/completions" in page.body.decode()


def test_nothing_on_stdout(server):
    complete(server.port, prompt="a", max_tokens=5)
    assert server.out_path.read_bytes() == b""


# ---------------------------------------------------------------------------------------------
# OpenAI's client library, unchanged


def test_openai_client_library_works_unchanged(server):
    openai = pytest.importorskip("openai", reason="the openai package is not installed "
                                                  "(pip install -e '.[test]')")
    client = openai.OpenAI(base_url=f"http://{HOST}:{server.port}/v1", api_key="x",
                           max_retries=0, timeout=HTTP_TIMEOUT)
    expected = complete(server.port, prompt="ab", max_tokens=50, seed=3)["choices"][0]["text"]
    got = client.completions.create(model=NAME, prompt="ab", max_tokens=50, seed=3)
    assert got.choices[0].text == expected and got.choices[0].finish_reason == "length"
    assert got.usage.completion_tokens == 50
    chunks = list(client.completions.create(model=NAME, prompt="ab", max_tokens=50, seed=3,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "length"
    assert [m.id for m in client.models.list()] == [NAME]
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=NAME, prompt="ab", temperature=-1)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="ab")


# ---------------------------------------------------------------------------------------------
# the process: signals, a port in use


GRACE_S = 5  # serve_process.GRACE_S: in-flight requests get this long after a signal


@pytest.mark.parametrize("signals, length, cut", [
    ([signal.SIGTERM], LONG, True),  # runs past the grace: cut, then exit 0
    ([signal.SIGINT], 100_000, False),  # ends within the grace: finished whole
    ([signal.SIGINT, signal.SIGINT], LONG, True),  # a second Ctrl-C cuts at once
], ids=["sigterm-cut", "sigint-finished", "sigint-twice"])
def test_a_signal_ends_the_streams_and_exits_0(serve, signals, length, cut):
    served = serve("--max-tokens", str(LONG))
    conn, response = open_stream(served.port, prompt="a", max_tokens=length)
    try:
        events = read_events(response, count=1)
        started = time.monotonic()
        for i, sig in enumerate(signals):
            time.sleep(0.2 * i)
            served.proc.send_signal(sig)
        events += read_events(response, limit_s=STOP_TIMEOUT)
    finally:
        conn.close()
    try:
        code = served.proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server still runs {STOP_TIMEOUT} s after {signals}")
    took = time.monotonic() - started
    assert code == 0, served.stderr
    assert events[-1] == "[DONE]"
    if cut:
        # the stream ends with an error event (OpenAI's clients raise it), not a silent end
        error = json.loads(events[-2])["error"]
        assert "shutting down" in error["message"], error
        assert (took >= GRACE_S - 0.5) == (len(signals) == 1), took
    else:
        [text], [pieces] = choices_of(events)
        assert len(text) == length and pieces[-1]["finish_reason"] == "length"
        assert took < GRACE_S, "nothing was left to wait for"
    served.assert_no_traceback()
    # the streams ended before uvicorn's own deadline: it cancelled nothing
    assert "Cancel" not in served.stderr, served.stderr


def test_a_port_in_use_is_one_line_and_exit_1(model, server):
    started = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "charrnn", "serve", str(model.run), "--port",
                        str(server.port)], capture_output=True, env=model.env, timeout=60)
    lines = p.stderr.decode().splitlines()
    assert p.returncode == 1 and len(lines) == 1, p.stderr.decode()
    assert lines[0].startswith("charrnn: error: ") and str(server.port) in lines[0], lines
    assert "in use" in lines[0]
    # refused before the kernels are compiled or warmed
    assert time.monotonic() - started < 20
    assert call(server.port, "GET", "/health").status == 200  # the first server serves on


# ---------------------------------------------------------------------------------------------
# the engine in-process: what a client cannot provoke


@pytest.fixture(scope="module")
def loaded(model):
    from charrnn.loading import load_model
    net, vocab, _ = load_model(model.run)
    return net, vocab


def _submit(engine, opts):
    """Submit one stream; a function that waits for (its text, its finish reason)."""
    from charrnn.serving import Completion
    pieces: queue.Queue = queue.Queue()
    engine.submit(Completion(opts, 1, (), lambda i, text, finish: pieces.put((text, finish))))

    def result() -> tuple[str, str]:
        text, deadline = "", time.monotonic() + HTTP_TIMEOUT
        while True:
            piece, finish = pieces.get(timeout=max(deadline - time.monotonic(), 0.01))
            text += piece
            if finish is not None:
                return text, finish
    return result


def test_the_engine_outlives_a_failed_batch(loaded, capsys):
    from charrnn.options import SampleOptions
    from charrnn.serving import BatchEngine
    net, vocab = loaded
    engine = BatchEngine(net, vocab, max_batch=1)
    stepper = engine.slots.stepper
    real, calls, release = stepper.generate, [], threading.Event()

    def fails_once(*args):
        calls.append(1)
        if len(calls) == 1:
            release.wait(HTTP_TIMEOUT)  # until the second request waits for room
            raise RuntimeError("a kernel failed")
        return real(*args)

    stepper.generate = fails_once
    opts = SampleOptions(length=10, seed=1, prime="ab")
    engine.start()
    try:
        first = _submit(engine, opts)
        deadline = time.monotonic() + HTTP_TIMEOUT
        while not calls and time.monotonic() < deadline:
            time.sleep(0.01)
        second = _submit(engine, opts)  # not in the failing batch: it waits (max_batch 1)
        assert engine.waiting == 1
        release.set()
        text, finish = first()
        assert finish == "error" and text, "the request in the failed batch is told"
        # served whole by the fresh slots: the text a lone sample with its seed gives
        from charrnn.sample import generate
        alone = "".join(piece for _, piece in generate(net, vocab, opts))
        assert second() == (alone[len("ab"):], "length")
        assert engine.alive and engine.active == 0
    finally:
        release.set()
        engine.stop()
    assert "a kernel failed" in capsys.readouterr().err


def test_no_queue_still_serves_what_fits(loaded):
    from charrnn.options import SampleOptions
    from charrnn.serving import BatchEngine, Completion, Overloaded
    net, vocab = loaded
    engine = BatchEngine(net, vocab, max_batch=2, max_waiting=0)  # not started: nothing runs
    opts = SampleOptions(length=5, prime="a")
    engine.submit(Completion(opts, 2, (), lambda *a: None))  # fits the batch: no waiting
    with pytest.raises(Overloaded):
        engine.submit(Completion(opts, 1, (), lambda *a: None))


def test_an_ensemble_is_served_the_text_it_samples(loaded):
    """The server's batch steps an ensemble as `sample` does: a request gets the text a lone
    sample with its seed gets."""
    from charrnn.ensemble import Ensemble
    from charrnn.model import Model
    from charrnn.options import SampleOptions
    from charrnn.sample import generate
    from charrnn.serving import BatchEngine
    net, vocab = loaded
    ensemble = Ensemble([net, Model(net.config, seed=7)])
    opts = SampleOptions(length=30, seed=4, prime="ab")
    engine = BatchEngine(ensemble, vocab, max_batch=2)
    engine.start()
    try:
        other = _submit(engine, SampleOptions(length=30, seed=5, prime="b"))
        text, finish = _submit(engine, opts)()
        other()
    finally:
        engine.stop()
    alone = "".join(piece for _, piece in generate(ensemble, vocab, opts))
    assert (text, finish) == (alone[len("ab"):], "length")
    assert alone != "".join(piece for _, piece in generate(net, vocab, opts)), \
        "the second member changes the text"
