"""Vocabulary, encoding and reading corpus files: round trips on arbitrary Unicode, the id dtype,
chunked reading with characters split across reads, and one-line errors for bad files."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
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
@given(corpus_text, st.integers(1, 16), st.sampled_from(["utf-8", "utf-16", "utf-32"]))
def test_chunked_reading_matches_the_text(text, chunk_bytes, encoding):
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
