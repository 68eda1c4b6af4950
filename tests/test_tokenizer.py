"""Vocabulary, encoding and reading corpus files: round trips on arbitrary Unicode, the id dtype,
chunked reading with characters split across reads, and one-line errors for bad files."""

import os
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from charrnn.tokenizer import CorpusError, UnknownCharacters, Vocab, read_corpus, split

# every code point but NUL, which a corpus file may not contain, and surrogates, which cannot be
# written as UTF-8 (st.text() leaves them out too)
corpus_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0"),
                      min_size=1)
# a mix that must survive: accents (precomposed and combining), CJK, emoji with a ZWJ sequence
MIXED = "naïve cafe\u0301 中文字符 😀👍🏽 👩‍💻\n"


@given(st.text())
def test_encode_decode_round_trip(text):
    vocab = Vocab.from_text(text)
    ids = vocab.encode(text)
    assert len(ids) == len(text)
    assert vocab.decode(ids) == text


@given(st.text())
def test_vocab_is_the_sorted_set_of_code_points(text):
    vocab = Vocab.from_text(text)
    expected = sorted(set(text))
    assert vocab.chars == "".join(expected)
    assert vocab.codepoints.tolist() == [ord(c) for c in expected]
    # id = index in that order
    assert vocab.encode(text).tolist() == [expected.index(c) for c in text]


@given(st.text(min_size=1), st.text())
def test_encoding_with_another_texts_vocabulary(vocab_text, extra):
    vocab = Vocab.from_text(vocab_text)
    known = "".join(c for c in extra if c in vocab_text)
    unknown = sorted(set(extra) - set(vocab_text))
    if unknown:
        with pytest.raises(UnknownCharacters) as e:
            vocab.encode(extra)
        assert e.value.chars == unknown
    assert vocab.decode(vocab.encode(extra, skip_unknown=True)) == known
    assert vocab.unknown(extra) == unknown
    assert vocab.unknown_counts(extra) == Counter(c for c in extra if c not in vocab_text)


def test_mixed_scripts_are_code_points_without_normalisation():
    vocab = Vocab.from_text(MIXED)
    ids = vocab.encode(MIXED)
    assert len(ids) == 25
    # "e" + COMBINING ACUTE stays two characters: not composed into "é"
    assert "\u0301" in vocab.chars and "e" in vocab.chars and "é" not in vocab.chars
    # ZWJ, skin-tone modifier and emoji are separate code points
    assert {"\u200d", "\U0001F3FD", "👩", "💻"} <= set(vocab.chars)
    assert vocab.decode(ids) == MIXED


def test_id_dtype_is_uint16_up_to_65536_characters():
    small = Vocab(np.arange(65536))  # every code point below 0x10000, surrogates included
    assert small.id_dtype == np.uint16
    ids = small.encode("\x00A\ud800\uffff")
    assert ids.dtype == np.uint16 and ids.tolist() == [0, 65, 0xD800, 65535]

    big = Vocab(np.arange(65537))
    assert big.id_dtype == np.uint32
    ids = big.encode("\U00010000A")
    assert ids.dtype == np.uint32 and ids.tolist() == [65536, 65]


def test_vocabulary_of_every_code_point():
    everything = "".join(map(chr, range(0x110000)))
    vocab = Vocab(np.arange(0x110000))
    assert vocab.chars == everything
    ids = vocab.encode(everything)
    assert ids.dtype == np.uint32
    assert np.array_equal(ids, np.arange(0x110000))
    assert vocab.decode(ids[::-1]) == everything[::-1]
    assert Vocab.from_text(everything).codepoints.tolist() == list(range(0x110000))


def test_vocab_rejects_unsorted_or_repeated_code_points():
    for bad in ([98, 97], [97, 97], [0x110000]):
        with pytest.raises(ValueError):
            Vocab(np.array(bad))


def test_vocab_cannot_change_under_its_lookup_table():
    vocab = Vocab.from_text("ab")
    vocab.encode("ab")  # builds the table
    with pytest.raises(ValueError):
        vocab.codepoints[0] = ord("z")


def test_unknown_characters_are_named_in_one_line():
    vocab = Vocab.from_text("abc")
    with pytest.raises(UnknownCharacters) as e:
        vocab.encode("ab\x07cé😀a\u0301")
    assert e.value.chars == ["\x07", "é", "\u0301", "😀"]
    assert str(e.value) == ("4 characters are not in the model's vocabulary: "
                            "'\\x07', 'é', '\\u0301', '😀'")
    with pytest.raises(UnknownCharacters, match="^1 character is not .*: 'z'$"):
        vocab.encode("z")


def test_many_unknown_characters_are_abbreviated():
    message = str(UnknownCharacters([chr(0x4E00 + i) for i in range(100)]))
    assert message.startswith("100 characters are")
    assert message.endswith("and 80 more")
    assert "\n" not in message


def test_skip_unknown_drops_them():
    vocab = Vocab.from_text("ab")
    ids = vocab.encode("xaé😀bx", skip_unknown=True)
    assert ids.tolist() == [0, 1]
    assert len(vocab.encode("xyz", skip_unknown=True)) == 0


def test_empty_vocabulary_knows_nothing():
    vocab = Vocab.from_text("")
    assert len(vocab) == 0 and len(vocab.encode("")) == 0
    with pytest.raises(UnknownCharacters):
        vocab.encode("a")


def test_tokenizer_and_corpora_do_not_import_numba():
    code = "import sys, charrnn.tokenizer, charrnn.corpora; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------------------------
# read_corpus


def write(tmp_path, data: bytes, name="corpus.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_read_corpus_in_memory(tmp_path):
    path = write(tmp_path, MIXED.encode())
    vocab, ids = read_corpus(path)
    assert vocab.chars == "".join(sorted(set(MIXED)))
    assert ids.dtype == np.uint16 and not isinstance(ids, np.memmap)
    assert vocab.decode(ids) == MIXED


def test_multibyte_characters_split_across_chunks(tmp_path):
    text = MIXED * 5  # 1-, 2-, 3- and 4-byte characters: a 7-byte read splits many of them
    path = write(tmp_path, text.encode())
    work = tmp_path / "work"
    vocab, ids = read_corpus(path, workdir=work, chunk_bytes=7)
    assert isinstance(ids, np.memmap) and not ids.flags.writeable
    assert (work / "corpus.ids").stat().st_size == len(text) * 2  # uint16 ids
    assert not (work / "corpus.ids.tmp").exists()
    assert vocab.decode(ids) == text
    whole_vocab, whole_ids = read_corpus(path)
    assert np.array_equal(vocab.codepoints, whole_vocab.codepoints)
    assert np.array_equal(ids, whole_ids)


@settings(max_examples=50, deadline=None)
@given(corpus_text, st.integers(1, 16),
       st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-32"]))
def test_chunked_reading_matches_the_text(text, chunk_bytes, encoding):
    # in UTF-8 without a byte-order mark, a first character U+FEFF is read as one; the other
    # encodings write a mark before the text, so a U+FEFF of the text stays a character
    assume(encoding != "utf-8" or not text.startswith("\ufeff"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.txt"
        path.write_bytes(text.encode(encoding))
        vocab, ids = read_corpus(path, encoding=encoding, workdir=tmp, chunk_bytes=chunk_bytes)
        assert vocab.chars == "".join(sorted(set(text)))
        assert vocab.decode(ids) == text


def test_chunked_reading_with_a_given_vocabulary(tmp_path):
    path = write(tmp_path, "abcxab\nyabz".encode())
    vocab = Vocab.from_text("abc\n")
    with pytest.raises(UnknownCharacters) as e:
        read_corpus(path, vocab=vocab, workdir=tmp_path, chunk_bytes=3)
    # all of them, not only those of the first read that has one
    assert e.value.chars == ["x", "y", "z"]
    assert str(e.value).startswith(f"{path}: 3 characters")
    assert not (tmp_path / "corpus.ids").exists() and not (tmp_path / "corpus.ids.tmp").exists()

    same, ids = read_corpus(path, vocab=vocab, skip_unknown=True, workdir=tmp_path, chunk_bytes=3)
    assert same is vocab
    assert vocab.decode(ids) == "abcab\nab"


def test_in_memory_unknown_characters_name_the_file(tmp_path):
    path = write(tmp_path, b"abq")
    with pytest.raises(UnknownCharacters) as e:
        read_corpus(path, vocab=Vocab.from_text("ab"))
    assert str(e.value) == f"{path}: 1 character is not in the model's vocabulary: 'q'"


def test_rereading_into_the_same_workdir_leaves_the_old_ids_intact(tmp_path):
    first = write(tmp_path, b"ab" * 8, "first.txt")
    second = write(tmp_path, b"zy" * 3, "second.txt")  # shorter, other ids
    _, old = read_corpus(first, workdir=tmp_path, chunk_bytes=4)
    vocab, new = read_corpus(second, workdir=tmp_path, chunk_bytes=4)
    assert old.tolist() == [0, 1] * 8  # the new file was renamed over the old, not written into it
    assert new.tolist() == [1, 0] * 3


@pytest.mark.parametrize("chunk_bytes", [64 << 20, 7])
def test_invalid_utf8_reports_the_byte_offset_in_the_file(tmp_path, chunk_bytes):
    # "é" is 2 bytes, so character and byte offsets differ; the bad byte is in a later read
    data = "é".encode() * 50 + b"ab\xffcd"
    path = write(tmp_path, data)
    with pytest.raises(CorpusError) as e:
        read_corpus(path, workdir=tmp_path, chunk_bytes=chunk_bytes)
    assert str(e.value) == (f"{path} is not valid utf-8 at byte 102; "
                            "pass --encoding or --errors replace")


def test_invalid_continuation_after_a_read_boundary(tmp_path):
    # the lead byte \xc3 ends the first 7-byte read; the byte that should continue it is "("
    path = write(tmp_path, b"abcdef\xc3(xyz")
    with pytest.raises(CorpusError, match="at byte 6;"):
        read_corpus(path, workdir=tmp_path, chunk_bytes=7)


def test_truncated_character_at_the_end(tmp_path):
    path = write(tmp_path, b"abc" + "中".encode()[:2])
    with pytest.raises(CorpusError, match="at byte 3;"):
        read_corpus(path, workdir=tmp_path, chunk_bytes=2)


def test_errors_replace_goes_on(tmp_path):
    path = write(tmp_path, b"ab\xffcd\xe4\xb8")
    vocab, ids = read_corpus(path, errors="replace", workdir=tmp_path, chunk_bytes=3)
    assert vocab.decode(ids) == "ab\ufffdcd\ufffd"
    vocab, ids = read_corpus(path, errors="ignore")
    assert vocab.decode(ids) == "abcd"
    # surrogateescape turns each bad byte into a lone surrogate, which must encode like any other
    vocab, ids = read_corpus(path, errors="surrogateescape")
    assert vocab.decode(ids) == "ab\udcffcd\udce4\udcb8"


def test_other_encodings(tmp_path):
    path = write(tmp_path, "naïve ©".encode("latin-1"))
    vocab, ids = read_corpus(path, encoding="latin-1")
    assert vocab.decode(ids) == "naïve ©"
    with pytest.raises(CorpusError, match="unknown encoding 'nope'"):
        read_corpus(path, encoding="nope")
    with pytest.raises(CorpusError, match="unknown error handler 'nope'"):
        read_corpus(path, errors="nope")


@pytest.mark.parametrize("chunk_bytes", [64 << 20, 2])
def test_nul_byte_means_binary(tmp_path, chunk_bytes):
    path = write(tmp_path, b"hello\x00world")
    with pytest.raises(CorpusError) as e:
        read_corpus(path, workdir=tmp_path, chunk_bytes=chunk_bytes)
    assert str(e.value) == f"{path} looks like a binary file (NUL byte at offset 5)"


def test_empty_file(tmp_path):
    path = write(tmp_path, b"")
    with pytest.raises(CorpusError) as e:
        read_corpus(path)
    assert str(e.value) == f"{path} is empty"


@pytest.mark.parametrize("workdir", [False, True])
def test_nothing_left_after_decoding(tmp_path, workdir):
    path = write(tmp_path, b"\xff\xfe\xff")
    with pytest.raises(CorpusError, match="no characters left"):
        read_corpus(path, errors="ignore", workdir=tmp_path if workdir else None, chunk_bytes=2)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.txt"
    with pytest.raises(CorpusError) as e:
        read_corpus(path)
    assert str(e.value) == f"cannot read {path}: No such file or directory"


def test_directory(tmp_path):
    with pytest.raises(CorpusError) as e:
        read_corpus(tmp_path)
    assert str(e.value) == f"cannot read {tmp_path}: Is a directory"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path):
    path = write(tmp_path, b"secret")
    path.chmod(0)
    with pytest.raises(CorpusError, match="Permission denied"):
        read_corpus(path)


# --------------------------------------------------------------------------------------------
# skipped characters


@pytest.mark.parametrize("chunked", [False, True])
def test_skipped_characters_are_counted(tmp_path, chunked):
    # the unknown ones fall in several 3-byte reads, and the 4-byte emoji is split across two
    path = write(tmp_path, "abxcaéyxb😀x".encode())
    skipped = Counter()
    vocab, ids = read_corpus(path, vocab=Vocab.from_text("abc"), skip_unknown=True,
                             skipped=skipped, workdir=tmp_path if chunked else None,
                             chunk_bytes=3 if chunked else 64 << 20)
    assert isinstance(ids, np.memmap) == chunked
    assert vocab.decode(ids) == "abcab"
    assert skipped == {"x": 3, "é": 1, "y": 1, "😀": 1}
    assert skipped.total() == 6 and sorted(skipped) == ["x", "y", "é", "😀"]


def test_skipped_stays_empty_when_nothing_is_dropped(tmp_path):
    path = write(tmp_path, b"abcab")
    skipped = Counter()
    read_corpus(path, vocab=Vocab.from_text("abc"), skip_unknown=True, skipped=skipped)
    assert skipped == {}


# --------------------------------------------------------------------------------------------
# byte-order marks, UTF-16 and UTF-32


@pytest.mark.parametrize("encoding", ["utf-8", "UTF8", "utf_8", "U8", "utf-8-sig"])
@pytest.mark.parametrize("chunk_bytes", [64 << 20, 1])
def test_utf8_byte_order_mark_is_not_a_character(tmp_path, encoding, chunk_bytes):
    # only the mark at the start goes: a U+FEFF further on is a character of the text
    path = write(tmp_path, b"\xef\xbb\xbf" + "ab\ufeffc".encode())
    vocab, ids = read_corpus(path, encoding=encoding, workdir=tmp_path, chunk_bytes=chunk_bytes)
    assert vocab.chars == "abc\ufeff"
    assert vocab.decode(ids) == "ab\ufeffc"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig"])
@pytest.mark.parametrize("chunk_bytes", [64 << 20, 2])
def test_invalid_utf8_after_a_byte_order_mark_counts_from_the_first_byte(tmp_path, encoding,
                                                                         chunk_bytes):
    path = write(tmp_path, b"\xef\xbb\xbf" + "éé".encode() + b"\xff")  # 3 + 4 bytes, then bad
    with pytest.raises(CorpusError) as e:
        read_corpus(path, encoding=encoding, workdir=tmp_path, chunk_bytes=chunk_bytes)
    assert str(e.value) == (f"{path} is not valid {encoding} at byte 7; "
                            "pass --encoding or --errors replace")


WIDE_TEXT = "The quick brown fox, naïve café.\n" * 20
CYRILLIC = "Привет, мир! Съешь же ещё этих булок.\n" * 20
BOM_HINT = "a byte-order mark at its start"


@pytest.mark.parametrize("data,kind,hint,encoding", [
    (b"\xff\xfe" + WIDE_TEXT.encode("utf-16-le"), "UTF-16", BOM_HINT, "utf-16"),
    (b"\xfe\xff" + WIDE_TEXT.encode("utf-16-be"), "UTF-16", BOM_HINT, "utf-16"),
    (b"\xff\xfe\x00\x00" + WIDE_TEXT.encode("utf-32-le"), "UTF-32", BOM_HINT, "utf-32"),
    (b"\x00\x00\xfe\xff" + WIDE_TEXT.encode("utf-32-be"), "UTF-32", BOM_HINT, "utf-32"),
    (WIDE_TEXT.encode("utf-16-le"), "UTF-16", "little-endian, without a byte-order mark",
     "utf-16-le"),
    (WIDE_TEXT.encode("utf-16-be"), "UTF-16", "big-endian, without a byte-order mark",
     "utf-16-be"),
    (b"\xff\xfe" + CYRILLIC.encode("utf-16-le"), "UTF-16", BOM_HINT, "utf-16"),
    (WIDE_TEXT.encode("utf-32-le"), "UTF-32", "little-endian, without a byte-order mark",
     "utf-32-le"),
    (WIDE_TEXT.encode("utf-32-be"), "UTF-32", "big-endian, without a byte-order mark",
     "utf-32-be"),
])
@pytest.mark.parametrize("read_as,chunk_bytes", [("utf-8", 64 << 20), ("utf-8", 3),
                                                 ("latin-1", 64 << 20)])
def test_utf16_and_utf32_read_as_bytes_are_named(tmp_path, data, kind, hint, encoding, read_as,
                                                 chunk_bytes):
    path = write(tmp_path, data)
    with pytest.raises(CorpusError) as e:
        read_corpus(path, encoding=read_as, workdir=tmp_path, chunk_bytes=chunk_bytes)
    assert str(e.value) == f"{path} looks like {kind} text ({hint}); pass --encoding {encoding}"


def test_utf16_without_nul_bytes_is_named_when_it_is_not_utf8(tmp_path):
    # CJK in UTF-16 has no NUL byte at all; the mark FF FE is what makes it invalid UTF-8
    path = write(tmp_path, b"\xff\xfe" + "中文字符。".encode("utf-16-le") * 50)
    with pytest.raises(CorpusError) as e:
        read_corpus(path)
    assert str(e.value) == (f"{path} looks like UTF-16 text ({BOM_HINT}); "
                            "pass --encoding utf-16")
    vocab, ids = read_corpus(path, encoding="utf-16")
    assert vocab.decode(ids) == "中文字符。" * 50


@pytest.mark.parametrize("data,encoding,text", [
    (b"\xff\xfe" + WIDE_TEXT.encode("utf-16-le"), "utf-16", WIDE_TEXT),
    (b"\xfe\xff" + WIDE_TEXT.encode("utf-16-be"), "utf-16", WIDE_TEXT),
    (b"\xff\xfe\x00\x00" + WIDE_TEXT.encode("utf-32-le"), "utf-32", WIDE_TEXT),
    (b"\x00\x00\xfe\xff" + WIDE_TEXT.encode("utf-32-be"), "utf-32", WIDE_TEXT),
    (WIDE_TEXT.encode("utf-16-le"), "utf-16-le", WIDE_TEXT),
    (WIDE_TEXT.encode("utf-32-be"), "utf-32-be", WIDE_TEXT),
])
@pytest.mark.parametrize("chunk_bytes", [64 << 20, 1])
def test_the_suggested_encoding_reads_it_without_the_mark(tmp_path, data, encoding, text,
                                                         chunk_bytes):
    path = write(tmp_path, data)
    vocab, ids = read_corpus(path, encoding=encoding, workdir=tmp_path, chunk_bytes=chunk_bytes)
    assert "\ufeff" not in vocab.chars
    assert vocab.decode(ids) == text


def test_latin1_of_a_file_without_nul_is_not_second_guessed(tmp_path):
    # "ÿþ" at the start of latin-1 text is no error, so there is nothing to explain
    path = write(tmp_path, "ÿþ café".encode("latin-1"))
    vocab, ids = read_corpus(path, encoding="latin-1")
    assert vocab.decode(ids) == "ÿþ café"


def binary_files():
    """(name, bytes) of real binary data, whose NUL bytes must not pass for UTF-16 or UTF-32."""
    with open(sys.executable, "rb") as f:
        yield "executable", f.read(1 << 16)
    yield "int16 counts", np.arange(3000, dtype="<i2").tobytes()
    yield "int32 counts", np.arange(3000, dtype="<i4").tobytes()
    yield "float64", np.random.default_rng(0).normal(size=2000).tobytes()
    yield "text with a stray NUL", b"plain text " * 100 + b"\0" + b"more text " * 100
    yield "short text with a NUL", b"hello\0world"
    yield "2 bytes of text and a NUL", b"a\0b"


@pytest.mark.parametrize("name,data", list(binary_files()))
def test_binary_files_keep_the_binary_message(tmp_path, name, data):
    path = write(tmp_path, data)
    with pytest.raises(CorpusError) as e:
        read_corpus(path)
    assert str(e.value) == f"{path} looks like a binary file (NUL byte at offset {data.index(0)})"


# --------------------------------------------------------------------------------------------
# pipes and devices


def feed(target, data: bytes) -> threading.Thread:
    """Write data to target (a FIFO's path, or a pipe's write end) from a thread, then close it."""
    def write_all():
        with open(target, "wb") as f:
            f.write(data)
    thread = threading.Thread(target=write_all, daemon=True)
    thread.start()
    return thread


def test_pipe_is_read_in_two_passes_through_a_temporary_copy(tmp_path):
    text = MIXED * 5
    work = tmp_path / "work"
    r, w = os.pipe()
    writer = feed(w, text.encode())
    try:
        vocab, ids = read_corpus(f"/dev/fd/{r}", workdir=work, chunk_bytes=7)
    finally:
        os.close(r)
    writer.join()
    assert isinstance(ids, np.memmap)  # the two-pass path, which reads the input twice
    assert vocab.chars == "".join(sorted(set(text)))
    assert vocab.decode(ids) == text
    assert [p.name for p in work.iterdir()] == ["corpus.ids"]  # the copy is gone


def test_fifo_without_workdir_is_copied_to_the_temporary_directory(tmp_path, monkeypatch):
    spool_dir = tmp_path / "tmp"
    spool_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool_dir))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = feed(fifo, MIXED.encode())
    vocab, ids = read_corpus(fifo)
    writer.join()
    assert vocab.decode(ids) == MIXED
    assert list(spool_dir.iterdir()) == []


def test_empty_pipe_is_empty(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = feed(fifo, b"")
    with pytest.raises(CorpusError) as e:
        read_corpus(fifo, workdir=tmp_path / "work")
    writer.join()
    assert str(e.value) == f"{fifo} is empty"


def test_copy_of_a_pipe_is_removed_after_an_error(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    work = tmp_path / "work"
    writer = feed(fifo, b"text" * 10 + b"\0")
    with pytest.raises(CorpusError, match="binary file .NUL byte at offset 40"):
        read_corpus(fifo, workdir=work, chunk_bytes=8)
    writer.join()
    assert list(work.iterdir()) == []


def test_standard_input_as_a_corpus(tmp_path):
    # what `cat a b | charrnn train /dev/stdin` does
    code = ("import sys; from charrnn.tokenizer import read_corpus; "
            "vocab, ids = read_corpus('/dev/stdin', workdir=sys.argv[1], chunk_bytes=5); "
            "sys.stdout.buffer.write(vocab.decode(ids).encode())")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], input=MIXED.encode() * 3,
                         capture_output=True, check=True)
    assert out.stdout.decode() == MIXED * 3


# --------------------------------------------------------------------------------------------
# split


def test_split_sizes_and_views():
    ids = np.arange(1000, dtype=np.uint16)
    train, val = split(ids, 0.1)
    assert len(train) == 900 and len(val) == 100
    assert train[-1] == 899 and val[0] == 900
    assert np.shares_memory(train, ids) and np.shares_memory(val, ids)

    train, val = split(ids[:7], 0.5)  # the validation part rounds down
    assert train.tolist() == [0, 1, 2, 3] and val.tolist() == [4, 5, 6]

    train, val = split(ids, 0.0)
    assert len(train) == 1000 and len(val) == 0


@pytest.mark.parametrize("val_frac", [1.0, -0.1, 1.5])
def test_split_rejects_fractions_outside_0_1(val_frac):
    with pytest.raises(ValueError):
        split(np.arange(10), val_frac)
