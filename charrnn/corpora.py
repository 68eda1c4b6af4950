"""Classic corpora that `charrnn corpus get` can fetch, each pinned by its sha256.

charrnn ships only text it generates itself (corpora/ in the repository). These are downloaded
from where they were published, or from a mirror, and kept only if they are byte for byte the
file the catalogue describes.
"""

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from .runs import make_dirs, remove_new_dirs

CATALOGUE = {
    "tinyshakespeare": {
        "url": "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/"
               "input.txt",
        "sha256": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        "chars": 1115394,
        "description": "40,000 lines of Shakespeare, the classic char-rnn corpus (Karpathy, 2015)",
    },
}

BLOCK = 1 << 16  # bytes per read, and so per progress report


class DownloadError(Exception):
    """A failed download, as one line suitable for printing after 'error: '."""


def download(name: str, dest: Path, url: str | None = None, progress=None,
             timeout: float = 30) -> Path:
    """Fetch corpus `name` (from `url`, a mirror, if given) into dest and return dest.

    The bytes go to a temporary file beside dest and replace dest only once their sha256 matches
    the catalogue, so a failed or wrong download never leaves a partial or foreign dest behind.
    progress(bytes_so_far, total_or_None) is called after every block."""
    if name not in CATALOGUE:
        raise DownloadError(f"unknown corpus {name!r}; known: {', '.join(sorted(CATALOGUE))}")
    entry = CATALOGUE[name]
    url = url or entry["url"]
    dest = Path(dest)
    tmp = None
    new_dirs = []
    try:
        new_dirs = make_dirs(dest.parent)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        with os.fdopen(fd, "wb") as out:
            sha256 = _fetch(url, out, progress, timeout)
            if sha256 != entry["sha256"]:
                raise DownloadError(f"{url} is not the {name} corpus: its sha256 is {sha256}, "
                                    f"expected {entry['sha256']}")
            out.flush()
            os.fsync(out.fileno())  # the bytes reach the disk before the name points at them
        os.replace(tmp, dest)
    except urllib.error.HTTPError as e:
        raise DownloadError(f"cannot download {name} from {url}: HTTP {e.code} {e.reason}") \
            from None
    except urllib.error.URLError as e:
        raise DownloadError(f"cannot download {name} from {url}: {e.reason}") from None
    except (OSError, http.client.HTTPException, ValueError) as e:
        # a connection cut short, a timeout, a malformed url, a disk that is full, ...
        raise DownloadError(f"cannot download {name} from {url}: {e}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if not dest.exists():  # failed: the folders made for it go too
            remove_new_dirs(new_dirs)
    return dest


def _fetch(url: str, out, progress, timeout: float) -> str:
    """Stream url into the binary file out; the sha256 (hex) of what was written."""
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        done = 0
        while block := response.read(BLOCK):
            digest.update(block)
            out.write(block)
            done += len(block)
            if progress is not None:
                progress(done, total)
    return digest.hexdigest()
