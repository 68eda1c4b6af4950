"""Characters <-> ids, and reading a corpus file into an id array.

A character is a Unicode code point: no normalisation, so a letter and its combining accent are two
characters, and an emoji or a CJK character is one. Encoding goes through UTF-32, where each code
point is one 4-byte unit, so a block of text becomes a uint32 array in one call and every step
after that is vectorised numpy; no Python code runs per character.

Plain numpy only: reading and encoding text must not pay for importing numba.
"""

import codecs
import os
import stat
import tempfile
import unicodedata
from collections import Counter
from contextlib import contextmanager
from functools import cached_property, reduce
from pathlib import Path

import numpy as np


class CorpusError(Exception):
    """A problem with the user's text, as ONE clear line suitable for printing after 'error: '."""


class UnknownCharacters(CorpusError):
    """Characters outside a vocabulary: in a prime string, or a new corpus for a trained model."""

    SHOWN = 20  # list at most this many, so the message stays one readable line

    def __init__(self, chars: list[str], source: str | None = None):
        self.chars = list(chars)
        n = len(self.chars)
        listed = ", ".join(_show(c) for c in self.chars[:self.SHOWN])
        if n > self.SHOWN:
            listed += f" and {n - self.SHOWN} more"
        what = "1 character is" if n == 1 else f"{n} characters are"
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{what} not in the model's vocabulary: {listed}")


def _show(c: str) -> str:
    """A character as a quoted literal; control and invisible characters come out escaped by repr,
    combining marks as \\uXXXX because on their own they would draw over the quote."""
    return ascii(c) if unicodedata.category(c).startswith("M") else repr(c)


# Characters per step of the vectorised work: a block's UTF-32 copy and index temporaries stay
# small enough for the cache, which makes encoding a 64 MB chunk ~8x faster than in one piece.
BLOCK = 1 << 20


def _codepoints(text: str) -> np.ndarray:
    """The text's code points, (len(text),) uint32, read-only view of its UTF-32 encoding.

    surrogatepass keeps lone surrogates (from a surrogateescape decode) as code points."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), "<u4")


def _text(codepoints: np.ndarray) -> str:
    return codepoints.astype("<u4", copy=False).tobytes().decode("utf-32-le", "surrogatepass")


class Vocab:
    """The sorted set of a text's Unicode code points; id = index in that order."""

    def __init__(self, codepoints: np.ndarray):
        codepoints = np.array(codepoints, dtype=np.uint32)
        if codepoints.ndim != 1 or np.any(codepoints[1:] <= codepoints[:-1]) \
                or np.any(codepoints > 0x10FFFF):
            raise ValueError("a vocabulary is a sorted array of distinct Unicode code points")
        codepoints.setflags(write=False)  # the id lookup table below is derived from it
        self.codepoints = codepoints  # (V,) uint32

    @classmethod
    def from_text(cls, text: str) -> "Vocab":
        # the distinct code points of each block are where its bincount is nonzero: linear time,
        # ~6x faster than np.unique's sort
        present = [np.flatnonzero(np.bincount(_codepoints(text[start:start + BLOCK])))
                   for start in range(0, max(len(text), 1), BLOCK)]
        return cls(np.unique(np.concatenate(present)))

    def __len__(self) -> int:
        return len(self.codepoints)

    @property
    def id_dtype(self):
        return np.uint16 if len(self) <= 65536 else np.uint32

    @property
    def chars(self) -> str:
        """All characters in id order."""
        return _text(self.codepoints)

    @cached_property
    def _table(self) -> np.ndarray:
        """Code point -> id, (largest code point + 2,); V marks a code point not in the vocabulary.

        A table lookup is several times faster than a binary search (np.searchsorted) per
        character, and the table has at most 0x110000 entries. Its last entry is V, so
        np.take(mode="clip") sends every code point above the largest one there."""
        V = len(self)
        size = int(self.codepoints[-1]) + 2 if V else 1
        table = np.full(size, V, np.uint16 if V < 65536 else np.uint32)
        table[self.codepoints] = np.arange(V)
        return table

    def encode(self, text: str, skip_unknown: bool = False) -> np.ndarray:
        """(len(text),) ids in id_dtype; characters not in the vocabulary raise UnknownCharacters,
        or are dropped when skip_unknown."""
        ids = np.empty(len(text), self._table.dtype)
        for start in range(0, len(text), BLOCK):
            np.take(self._table, _codepoints(text[start:start + BLOCK]), mode="clip",
                    out=ids[start:start + BLOCK])
        # V, the table's mark for an unknown code point, is larger than every id
        if len(ids) and ids.max() == len(self):
            if not skip_unknown:
                raise UnknownCharacters(self.unknown(text))
            ids = ids[ids != len(self)]
        return ids.astype(self.id_dtype, copy=False)

    def decode(self, ids) -> str:
        return _text(np.take(self.codepoints, ids))

    def unknown(self, text: str) -> list[str]:
        """The distinct characters of text that are not in the vocabulary, in code point order."""
        return sorted(self.unknown_counts(text))

    def unknown_counts(self, text: str) -> Counter:
        """How often each character of text that is not in the vocabulary occurs in it."""
        counts = Counter()
        for start in range(0, len(text), BLOCK):
            codepoints = _codepoints(text[start:start + BLOCK])
            codepoints = codepoints[np.take(self._table, codepoints, mode="clip") == len(self)]
            chars, n = np.unique(codepoints, return_counts=True)
            counts.update(dict(zip(_text(chars), n.tolist())))
        return counts


def read_corpus(path, *, encoding="utf-8", errors="strict", vocab: Vocab | None = None,
                skip_unknown=False, workdir=None, chunk_bytes: int = 64 << 20,
                skipped: Counter | None = None,
                ids_name: str = "corpus.ids") -> tuple[Vocab, np.ndarray]:
    """(vocab, ids) of a text file; the vocabulary is the file's own characters unless given.

    The file is decoded in reads of chunk_bytes. A file larger than that, with a workdir, is never
    held whole: one pass collects its vocabulary (when none is given), a second encodes it chunk by
    chunk into workdir/ids_name, and the ids come back as a read-only np.memmap of that file.
    A pipe or a device (`cat a b | charrnn train /dev/stdin`, `<(...)`) cannot be read twice and
    has no size, so it is first copied into a temporary file (in workdir, else the system's
    temporary directory) that is gone once this returns or raises.
    errors is the decoder's error handler ("strict", "replace", "ignore", ...). In UTF-8 a
    byte-order mark at the start of the file is not a character.
    skipped, when given a Counter, gains the number of times each character that skip_unknown
    dropped occurred: skipped.total() characters dropped, sorted(skipped) the distinct ones."""
    path = Path(path)
    _check_codec(encoding, errors)
    with _open(path) as raw, _seekable(raw, path, workdir, chunk_bytes) as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise CorpusError(f"{path} is empty")

        def chunks():
            return _decoded_chunks(f, path, encoding, errors, chunk_bytes)

        if workdir is None or size <= chunk_bytes:
            text = "".join(chunks())
            if vocab is None:
                vocab = Vocab.from_text(text)
            try:
                ids = _encode(vocab, text, skip_unknown, skipped)
            except UnknownCharacters as e:
                raise UnknownCharacters(e.chars, source=str(path)) from None
        else:
            if vocab is None:
                vocab = Vocab(reduce(np.union1d, (Vocab.from_text(t).codepoints for t in chunks())))
            ids = _encode_to_file(vocab, chunks(), Path(workdir) / ids_name, skip_unknown,
                                  skipped, path)
    if len(ids) == 0:
        raise _nothing_left(path, skip_unknown)
    return vocab, ids


class NothingKnown(CorpusError):
    """A text of which skipping unknown characters leaves nothing."""


def _nothing_left(path: Path, skip_unknown: bool) -> CorpusError:
    if skip_unknown:
        return NothingKnown(f"{path} has no character the model knows: --skip-unknown dropped "
                            f"them all")
    return CorpusError(f"{path} has no characters left after decoding")


def _check_codec(encoding: str, errors: str):
    try:
        codecs.lookup(encoding)
    except (LookupError, ValueError):  # ValueError: a name with a NUL in it
        raise CorpusError(f"unknown encoding {encoding!r}") from None
    try:
        codecs.lookup_error(errors)
    except LookupError:
        raise CorpusError(f"unknown error handler {errors!r} (try strict, replace or ignore)") \
            from None


def _open(path: Path):
    try:
        return open(path, "rb")
    except OSError as e:  # no such file, a directory, permission denied, ...
        raise CorpusError(f"cannot read {path}: {e.strerror or e}") from None


@contextmanager
def _seekable(f, path: Path, workdir, chunk_bytes: int):
    """f itself when it is a regular file, else an anonymous temporary copy of what it gives.

    Only a regular file has a size and can be read twice; a pipe (`cat a b |`, `<(...)`) gives
    its bytes once and reports size 0. The copy is made in reads of chunk_bytes (memory bounded)
    into a tempfile.TemporaryFile, which has no name in the directory (or loses it at once):
    nothing is left behind, whatever happens. A device is refused: /dev/zero would fill the
    disk."""
    mode = os.fstat(f.fileno()).st_mode
    if stat.S_ISREG(mode):
        yield f
        return
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        raise CorpusError(f"{path} is a device, not a text file or a pipe")
    directory = Path(workdir) if workdir is not None else Path(tempfile.gettempdir())
    try:
        directory.mkdir(parents=True, exist_ok=True)
        spool = tempfile.TemporaryFile(dir=directory)
    except OSError as e:
        raise CorpusError(f"cannot create a temporary copy of {path} in {directory}: "
                          f"{e.strerror or e}") from None
    with spool:
        while block := _read(f, path, chunk_bytes):
            try:
                spool.write(block)
            except OSError as e:  # a full disk
                raise CorpusError(f"cannot copy {path} into {directory}: {e.strerror or e}") \
                    from None
        spool.flush()
        yield spool


def _read(f, path: Path, n: int) -> bytes:
    try:
        return f.read(n)
    except OSError as e:
        raise CorpusError(f"cannot read {path}: {e.strerror or e}") from None


# Codecs in which a NUL byte is ordinary text; in every other (byte-oriented) one it means binary.
WIDE = ("utf-16", "utf-32")


def _decoded_chunks(f, path: Path, encoding: str, errors: str, chunk_bytes: int):
    """Yield the whole file's text in pieces decoded from reads of chunk_bytes.

    The incremental decoder keeps the first bytes of a character split across two reads until the
    next read completes it. In UTF-8 a byte-order mark at the start is skipped here rather than by
    the 'utf-8-sig' decoder, which would count error offsets from after it."""
    name = codecs.lookup(encoding).name
    utf8 = name in ("utf-8", "utf-8-sig")
    f.seek(0)
    offset = 0  # file offset of the block being decoded
    if utf8 and _read(f, path, len(codecs.BOM_UTF8)) == codecs.BOM_UTF8:
        offset = len(codecs.BOM_UTF8)
    f.seek(offset)
    decoder = codecs.getincrementaldecoder("utf-8" if utf8 else encoding)(errors)
    check_nul = not name.startswith(WIDE)
    while True:
        block = _read(f, path, chunk_bytes)
        if check_nul and (nul := block.find(b"\0")) >= 0:
            raise CorpusError(_wide_text_message(f, path) or f"{path} looks like a binary file "
                              f"(NUL byte at offset {offset + nul})")
        # the decoder sees these held-back bytes followed by the block, so error positions count
        # from them
        held = len(decoder.getstate()[0])
        try:
            text = decoder.decode(block, final=not block)
        except UnicodeDecodeError as e:
            wide = _wide_text_message(f, path) if check_nul else None
            raise CorpusError(wide or f"{path} is not valid {encoding} at byte "
                              f"{offset - held + e.start}; pass --encoding or --errors replace") \
                from None
        except UnicodeError as e:  # "UTF-16 stream does not start with BOM", and the like
            raise CorpusError(f"{path} is not valid {encoding}: {e}; pass another --encoding") \
                from None
        yield text
        if not block:
            return
        offset += len(block)


# Byte-order marks, UTF-32's first: FF FE 00 00 begins with UTF-16's FF FE.
BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
HEAD = 4096  # bytes of the file a guess at UTF-16/32 looks at


def _wide_text_message(f, path: Path) -> str | None:
    """Why the file, read in a byte-oriented encoding, looks like UTF-16 or UTF-32 text, and the
    --encoding that reads it; None when it does not.

    Either it starts with a byte-order mark, or its first HEAD bytes decode, in one of those
    encodings and byte orders, to text that is mostly (3 in 4) Latin-1 characters, which in UTF-16
    or UTF-32 are the code units whose high bytes are NUL, and otherwise printable (19 in 20),
    with no NUL character. Binary data, or text with a stray NUL byte, fails that."""
    f.seek(0)
    head = _read(f, path, HEAD)
    for bom, encoding in BOMS:
        if head.startswith(bom):
            return (f"{path} looks like {encoding.upper()} text (a byte-order mark at its start); "
                    f"pass --encoding {encoding}")
    for encoding in ("utf-32-le", "utf-32-be", "utf-16-le", "utf-16-be"):
        unit = 4 if encoding.startswith("utf-32") else 2
        if len(head) < HEAD and len(head) % unit:  # the whole file, not whole code units
            continue
        text = head[:len(head) - len(head) % unit].decode(encoding, "replace")
        if "\0" not in text and _share(text, _printable) >= 0.95 \
                and _share(text, lambda c: c < "\u0100") >= 0.75:
            wide, order = encoding.rsplit("-", 1)
            endian = "little" if order == "le" else "big"
            return (f"{path} looks like {wide.upper()} text ({endian}-endian, without a "
                    f"byte-order mark); pass --encoding {encoding}")
    return None


def _printable(c: str) -> bool:
    return (c.isprintable() or c.isspace()) and c != "\ufffd"  # U+FFFD: undecodable


def _share(text: str, test) -> float:
    """The fraction of text's characters for which test is true."""
    return sum(map(test, text)) / max(len(text), 1)


def _encode(vocab: Vocab, text: str, skip_unknown: bool, skipped: Counter | None) -> np.ndarray:
    """vocab.encode(text, skip_unknown), adding what it dropped to skipped (a Counter, or None)."""
    ids = vocab.encode(text, skip_unknown)
    if skipped is not None and len(ids) < len(text):
        skipped.update(vocab.unknown_counts(text))
    return ids


def _encode_to_file(vocab: Vocab, chunks, dest: Path, skip_unknown: bool,
                    skipped: Counter | None, path: Path) -> np.memmap:
    """Append each chunk's ids to dest and map the result; one chunk's ids in memory at a time.

    The ids are written to a temporary name and renamed over dest: an older corpus.ids may still
    be mapped, by this process or another, and truncating a mapped file kills its readers with
    SIGBUS, while a rename leaves them the old file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    unknown = set()
    try:
        with open(tmp, "wb") as out:
            for text in chunks:
                if unknown:  # already failing: only gather the rest for a complete message
                    unknown.update(vocab.unknown(text))
                    continue
                try:
                    _encode(vocab, text, skip_unknown, skipped).tofile(out)
                except UnknownCharacters as e:
                    unknown.update(e.chars)
        if unknown:
            raise UnknownCharacters(sorted(unknown), source=str(path))
        if tmp.stat().st_size == 0:  # np.memmap cannot map an empty file
            raise _nothing_left(path, skip_unknown)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return np.memmap(dest, dtype=vocab.id_dtype, mode="r")


def split(ids: np.ndarray, val_frac: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, val): val is the last val_frac of the ids (views, no copies)."""
    if not 0 <= val_frac < 1:
        raise ValueError(f"val_frac must be in [0, 1), got {val_frac}")
    n_train = len(ids) - int(len(ids) * val_frac)
    return ids[:n_train], ids[n_train:]
