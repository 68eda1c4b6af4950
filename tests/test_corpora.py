"""Downloading a catalogued corpus (from a loopback HTTP server, never the internet) and the
generated corpora in corpora/."""

import hashlib
import importlib.util
import math
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from charrnn.corpora import CATALOGUE, DownloadError, download

ROOT = Path(__file__).resolve().parent.parent
CORPORA = ROOT / "corpora"

BODY = "First Citizen:\nBefore we proceed any further, hear me speak.\n".encode() * 3000


@pytest.fixture
def server():
    """Base URL of a loopback server that serves BODY at /body.txt and 404 everywhere else."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/body.txt":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)

        def log_message(self, *args):  # keep the test output clean
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # a short poll interval: shutdown() waits for the loop to notice
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def body_corpus(monkeypatch, server):
    """A catalogue entry 'body' for BODY, with its true sha256."""
    monkeypatch.setitem(CATALOGUE, "body", {
        "url": f"{server}/body.txt", "sha256": hashlib.sha256(BODY).hexdigest(),
        "chars": len(BODY), "description": "test"})
    return "body"


def test_download_writes_the_verified_file(tmp_path, body_corpus):
    calls = []
    dest = tmp_path / "sub" / "body.txt"
    assert download(body_corpus, dest, progress=lambda done, total: calls.append((done, total))) \
        == dest
    assert dest.read_bytes() == BODY
    assert list(dest.parent.iterdir()) == [dest]  # no temporary file left beside it
    # one call per 64 KiB block, counting up to the whole body
    assert calls[-1] == (len(BODY), len(BODY))
    assert len(calls) == math.ceil(len(BODY) / (1 << 16))
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_wrong_sha256_writes_nothing(tmp_path, server):
    # the mirror serves BODY, which is not tinyshakespeare
    url = f"{server}/body.txt"
    with pytest.raises(DownloadError) as e:
        download("tinyshakespeare", tmp_path / "tinyshakespeare.txt", url=url)
    assert str(e.value) == (f"{url} is not the tinyshakespeare corpus: its sha256 is "
                            f"{hashlib.sha256(BODY).hexdigest()}, expected "
                            "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed")
    assert list(tmp_path.iterdir()) == []


def test_failed_download_leaves_an_existing_file_untouched(tmp_path, body_corpus, monkeypatch):
    dest = tmp_path / "body.txt"
    dest.write_bytes(b"the old text")
    monkeypatch.setitem(CATALOGUE[body_corpus], "sha256", "0" * 64)
    with pytest.raises(DownloadError):
        download(body_corpus, dest)
    assert dest.read_bytes() == b"the old text"
    assert list(tmp_path.iterdir()) == [dest]


def test_http_error(tmp_path, server):
    dest = tmp_path / "x.txt"
    with pytest.raises(DownloadError, match="^cannot download tinyshakespeare from .*: HTTP 404"):
        download("tinyshakespeare", dest, url=f"{server}/missing.txt")
    assert list(tmp_path.iterdir()) == []


def test_connection_refused(tmp_path):
    with socket.socket() as s:  # a port that nothing listens on once this socket is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match="^cannot download tinyshakespeare from .*refused"):
        download("tinyshakespeare", tmp_path / "x.txt", url=f"http://127.0.0.1:{port}/", timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_unknown_name(tmp_path):
    with pytest.raises(DownloadError) as e:
        download("war-and-peace", tmp_path / "x.txt")
    assert str(e.value) == "unknown corpus 'war-and-peace'; known: tinyshakespeare"


def test_catalogue_entries_are_complete():
    for entry in CATALOGUE.values():
        assert entry["url"].startswith("https://")
        assert len(entry["sha256"]) == 64 and int(entry["sha256"], 16) >= 0
        assert entry["chars"] > 0 and entry["description"]


# --------------------------------------------------------------------------------------------
# corpora/


def load_script():
    spec = importlib.util.spec_from_file_location("make_corpora", CORPORA / "make_corpora.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_corpora_regenerates_the_committed_files(tmp_path):
    subprocess.run([sys.executable, str(CORPORA / "make_corpora.py"), str(tmp_path)], check=True,
                   capture_output=True)
    for name in ["markov.txt", "grammar.txt"]:
        assert (tmp_path / name).read_bytes() == (CORPORA / name).read_bytes(), name


def test_committed_corpora_are_what_the_readme_says():
    markov = (CORPORA / "markov.txt").read_text()
    grammar = (CORPORA / "grammar.txt").read_text()
    assert len(markov) == 100_000 and set(markov) == set("abcdef \n")
    assert len(grammar) >= 200_000 and "\n\n" in grammar
    assert max(len(line) for line in grammar.splitlines()) <= 72

    readme = (CORPORA / "README.md").read_text()
    assert f"| `grammar.txt` | {len(grammar):,} |" in readme
    rate = load_script().markov_source().entropy_rate()
    assert f"{rate:.4f} nats/char ({rate / math.log(2):.4f} bits/char)" in readme
    for name, entry in CATALOGUE.items():
        assert f"`{name}` | {entry['chars']:,} characters" in readme
        assert entry["sha256"] in readme and entry["url"] in readme
