"""A training corpus of one or more documents: the files and folders given on the command line,
read into the ids a run trains on and the ids it validates on.

Documents are joined with a separator (`--doc-sep`). The held-out text is the last --val-frac
of *each* document, so validation covers every source (for one file: the last --val-frac of
it, as it always was); or, with `--val-file`, a whole file. Memory stays bounded: each large
document is encoded chunk by chunk into a memory-mapped file of the run directory, and the
train and validation ids are assembled from those by slices into one more (corpus.ids).
"""

import os
from collections import Counter
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path

import numpy as np

from .tokenizer import WIDE, CorpusError, Vocab, read_corpus, split
from .words import plural

CORPUS_IDS = "corpus.ids"  # the ids a run trains and validates on, when they are large
BINARY_PROBE = 8192  # bytes of a file in a folder looked at for a NUL byte
COPY_BLOCK = 1 << 24  # ids copied at a time when the documents are assembled


@dataclass
class Corpus:
    vocab: Vocab
    train: np.ndarray  # (N_train,) ids: the documents' training parts, joined
    val: np.ndarray  # (N_val,) ids: their held-out parts (or the --val-file), joined
    files: list[dict]  # {"path", "chars"} per document, in reading order
    warnings: list[str] = field(default_factory=list)

    @property
    def chars(self) -> int:
        return sum(f["chars"] for f in self.files)


def _hidden(path: Path, folder: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(folder).parts)


def _looks_binary(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return b"\0" in f.read(BINARY_PROBE)
    except OSError:
        return False  # reading it properly will say what is wrong


def expand(sources: list[Path], encoding: str = "utf-8") -> tuple[list[Path], list[str]]:
    """The files of the sources, and the warnings to show: a file as given; a folder's files
    recursively, in sorted order, leaving out hidden files (a name starting with '.', or in such
    a folder) and files that look binary (a NUL byte near the start, except in UTF-16/32)."""
    files, left_out = [], 0
    wide = encoding.lower().replace("_", "-").startswith(WIDE)
    for source in sources:
        if not source.is_dir():
            files.append(source)
            continue
        found = sorted(p for p in source.rglob("*") if p.is_file())
        kept = [p for p in found if not _hidden(p, source)
                and (wide or not _looks_binary(p))]
        if not kept:
            raise CorpusError(f"{source} holds no text file (hidden and binary files are left "
                              f"out)")
        left_out += len(found) - len(kept)
        files += kept
    warnings = [f"left out {plural(left_out, 'hidden or binary file')} found in folders"] \
        if left_out else []
    return files, warnings


def read_documents(files: list[Path], *, val_frac: float, doc_sep: str = "\n\n",
                   val_file: Path | None = None, vocab: Vocab | None = None,
                   extra_chars: np.ndarray | None = None, encoding: str = "utf-8",
                   errors: str = "strict", skip_unknown: bool = False,
                   skipped: Counter | None = None, workdir: Path | None = None) -> Corpus:
    """The corpus of these files. The vocabulary is given (a resumed run's; unknown characters
    are an error, or dropped with skip_unknown and counted in skipped), or made of the
    documents' characters, the separator's and extra_chars (code points a model started from
    already knows)."""
    read = dict(encoding=encoding, errors=errors, skip_unknown=skip_unknown, skipped=skipped,
                workdir=workdir)
    if len(files) == 1 and val_file is None and extra_chars is None:  # one document
        vocab, ids = read_corpus(files[0], vocab=vocab, **read)
        train, val = split(ids, val_frac)
        return Corpus(vocab, train, val, [{"path": str(files[0]), "chars": len(ids)}])
    docs = []
    try:
        for k, path in enumerate([*files, *([val_file] if val_file else [])]):
            docs.append(read_corpus(path, vocab=vocab, **read, ids_name=f".doc{k}.ids"))
        if vocab is None:
            sep_vocab = [Vocab.from_text(doc_sep).codepoints] if doc_sep else []
            extra = [np.asarray(extra_chars, np.uint32)] if extra_chars is not None else []
            vocab = Vocab(reduce(np.union1d, [v.codepoints for v, _ in docs] + sep_vocab
                                 + extra))
        sep = vocab.encode(doc_sep, skip_unknown)  # a model's vocabulary may lack it
        parts = []  # (ids, id map) of each training part, then each held-out part
        held_out = []
        for doc_vocab, ids in docs[:len(files)]:
            id_map = np.searchsorted(vocab.codepoints, doc_vocab.codepoints).astype(
                vocab.id_dtype)
            train, val = (ids, ids[:0]) if val_file else split(ids, val_frac)
            parts.append((train, id_map))
            held_out.append((val, id_map))
        if val_file:
            doc_vocab, ids = docs[-1]
            held_out = [(ids, np.searchsorted(vocab.codepoints, doc_vocab.codepoints).astype(
                vocab.id_dtype))]
        n_train = _joined_length(parts, len(sep))
        ids = _assemble([parts, held_out], sep, vocab.id_dtype, workdir)
    finally:
        for k in range(len(docs)):
            if workdir is not None:
                (Path(workdir) / f".doc{k}.ids").unlink(missing_ok=True)
    info = [{"path": str(p), "chars": len(d[1])} for p, d in zip(files, docs)]
    if val_file:
        info.append({"path": str(val_file), "chars": len(docs[-1][1]), "held_out": True})
    return Corpus(vocab, ids[:n_train], ids[n_train:], info)


def _joined_length(parts: list[tuple[np.ndarray, np.ndarray]], sep: int) -> int:
    """The length of the non-empty parts joined with a separator of `sep` ids between them."""
    lengths = [len(ids) for ids, _ in parts if len(ids)]
    return sum(lengths) + sep * max(0, len(lengths) - 1)


def _assemble(groups, sep: np.ndarray, dtype, workdir) -> np.ndarray:
    """The groups' parts (ids in their document's vocabulary, and its map to the corpus's),
    each group's non-empty parts joined with sep, the groups one after another: in memory, or
    into workdir/corpus.ids (memory-mapped) when it is large."""
    total = sum(_joined_length(parts, len(sep)) for parts in groups)
    if workdir is None or total * np.dtype(dtype).itemsize <= COPY_BLOCK:
        out = np.empty(total, dtype)
        tmp = None
    else:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        tmp = Path(workdir) / (CORPUS_IDS + ".tmp")
        out = np.memmap(tmp, dtype=dtype, mode="w+", shape=(total,))
    at = 0
    for parts in groups:
        first = True
        for ids, id_map in parts:
            if not len(ids):
                continue
            if not first:
                out[at:at + len(sep)] = sep
                at += len(sep)
            first = False
            for start in range(0, len(ids), COPY_BLOCK):
                block = np.asarray(ids[start:start + COPY_BLOCK])
                out[at:at + len(block)] = id_map[block]
                at += len(block)
    if tmp is None:
        return out
    out.flush()
    del out
    dest = Path(workdir) / CORPUS_IDS
    os.replace(tmp, dest)  # a mapped older corpus.ids keeps its readers: see tokenizer
    return np.memmap(dest, dtype=dtype, mode="r")
