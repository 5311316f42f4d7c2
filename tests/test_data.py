import json

import pytest

from scratchgpt.data import sources
from scratchgpt.data.sources import (
    chitchat_conversations,
    iter_document_pieces,
    iter_documents,
    iter_texts,
    resolve_inputs,
)

from .testing_utils import tiny_tokenizer


def write(path, content: str | bytes):
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return str(path)


PLAY = ("ACT I\n\nSCENE I. A street.\n\n  Enter two servants.\n\nFIRST SERVANT:\nGood morrow.\n\n\n"
        "SECOND SERVANT:\r\n\tAnd to you <|endoftext|> too.  \n\n")


def test_text_files_are_one_verbatim_document_by_default(tmp_path):
    path = write(tmp_path / "play.txt", PLAY)
    assert list(iter_documents([path])) == [PLAY]  # blank lines, indentation, CRLF, trailing newline: as written
    assert list(iter_documents([path], "file")) == [PLAY]


def test_paragraph_mode_splits_on_blank_lines(tmp_path):
    path = write(tmp_path / "a.txt", "first line\nstill first\n\n\n second\r\n\r\nthird")
    assert list(iter_documents([path], "paragraph")) == ["first line\nstill first", " second", "third"]


@pytest.mark.parametrize("content, expected", [
    ("one\n<|endoftext|>\ntwo\n<|endoftext|>\nthree\n", ["one", "two", "three\n"]),  # a separator line
    ("one<|endoftext|>two<|endoftext|><|endoftext|>three", ["one", "two", "three"]),  # inline; empty ones dropped
    ("one\n\n<|endoftext|>\n\n  two\n<|endoftext|>\n", ["one\n", "\n  two"]),  # only one line break each side
    ("a\r\n<|endoftext|>\r\nb <|endoftext|> c", ["a", "b ", " c"]),
    ("no separator\n\nat all\n", ["no separator\n\nat all\n"]),
])
def test_separator_mode(tmp_path, content, expected):
    path = write(tmp_path / "a.txt", content)
    assert list(iter_documents([path], "separator")) == expected


def test_separator_mode_takes_any_literal_string(tmp_path):
    path = write(tmp_path / "a.txt", "first\n=====\nsecond [x] third\n")
    assert list(iter_documents([path], "separator", "=====")) == ["first", "second [x] third\n"]
    assert list(iter_documents([path], "separator", "[x]")) == ["first\n=====\nsecond ", " third\n"]
    with pytest.raises(ValueError, match="document_separator must be a non-empty string without line breaks"):
        list(iter_documents([path], "separator", ""))
    with pytest.raises(ValueError, match="text_documents must be one of file, separator, paragraph; got 'lines'"):
        list(iter_documents([path], "lines"))


def test_long_documents_stream_in_pieces_that_tokenize_like_the_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "PIECE_CHARS", 40)
    lines = ["Hello world, how are you?\n", "  indented line\n", "\n", "\n", "tabs\tand   spaces   \n",
             "x\n", "ünïcödé 😀 <|endoftext|>\n", "\r\n", "last words"]
    text = "".join(lines * 6)
    path = write(tmp_path / "a.txt", text)
    pieces = list(iter_document_pieces([path]))
    assert len(pieces) > 5 and [end for _, end in pieces] == [False] * (len(pieces) - 1) + [True]
    assert "".join(piece for piece, _ in pieces) == text == "".join(iter_documents([path]))
    for piece, _ in pieces[:-1]:  # cut only between "<non-space>\n" and a non-space character
        assert piece.endswith("\n") and not piece[-2].isspace()
    tokenizer = tiny_tokenizer()
    whole = tokenizer(text, add_special_tokens=False).input_ids
    assert [i for piece, _ in pieces for i in tokenizer(piece, add_special_tokens=False).input_ids] == whole


ONE_LINE = "".join(f"word{i}, {'and  ' if i % 3 else ''}ünï\tcödé 😀 'tis {i * 7}!! " for i in range(200)) + "end"


@pytest.mark.parametrize("mode, separator", [("file", None), ("paragraph", None), ("separator", "<| x |>")])
def test_a_file_that_is_one_long_line_streams_in_pieces_that_tokenize_like_the_whole(tmp_path, monkeypatch, mode,
                                                                                       separator):
    monkeypatch.setattr(sources, "PIECE_CHARS", 40)
    text = ONE_LINE.replace("word50,", "word50, <| x |>") if separator else ONE_LINE
    path = write(tmp_path / "a.txt", text)
    pieces = list(iter_document_pieces([path], mode, separator or "<|endoftext|>"))
    assert len(pieces) > 20 and max(len(piece) for piece, _ in pieces) < 200  # bounded, not one 10 kB piece
    documents = text.split(separator) if separator else [text]
    assert list(iter_documents([path], mode, separator or "<|endoftext|>")) == documents
    for piece, ends_document in pieces:  # cut only before spaces or tabs that follow a non-space character
        assert ends_document or piece[-1] not in " \t"
    tokenizer = tiny_tokenizer()
    whole = [i for document in documents for i in tokenizer(document, add_special_tokens=False).input_ids]
    assert [i for piece, _ in pieces for i in tokenizer(piece, add_special_tokens=False).input_ids] == whole


def test_a_long_line_without_spaces_is_still_read_in_bounded_pieces(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(sources, "PIECE_CHARS", 40)
    monkeypatch.setattr(sources, "_HARD_CUT_CHARS", 400)
    text = "数据" * 2000
    pieces = list(iter_document_pieces([write(tmp_path / "a.txt", text)]))
    assert "".join(piece for piece, _ in pieces) == text and max(len(piece) for piece, _ in pieces) <= 800
    assert "without a space or tab to cut at" in caplog.text


def test_invalid_utf8_inside_a_long_line_names_the_line_and_byte(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "PIECE_CHARS", 40)
    path = write(tmp_path / "a.txt", b"ok\n" + ("x" * 100 + " ").encode() * 3 + b"\xff rest\n")
    with pytest.raises(ValueError, match=r"a.txt:2: not valid UTF-8 \(invalid start byte at byte 304 of the line\)"):
        list(iter_document_pieces([path]))


def test_jsonl_text_and_messages(tmp_path):
    records = [{"text": "plain"}, {"messages": [{"role": "user", "content": "hi"},
                                                {"role": "assistant", "content": "hello"}]}]
    path = write(tmp_path / "a.jsonl", "\n".join(json.dumps(r) for r in records) + "\n\n")
    documents = list(iter_documents([path]))
    assert documents == ["plain", records[1]["messages"]]
    assert list(iter_texts(documents)) == ["plain", "hi", "hello"]


def test_folders_expand_to_their_files_in_order(tmp_path):
    write(tmp_path / "b.txt", "two")
    write(tmp_path / "a.jsonl", '{"text": "one"}\n')
    write(tmp_path / "notes.md", "ignored")
    assert list(iter_documents([str(tmp_path)])) == ["one", "two"]


def test_chitchat_turns_become_alternating_messages():
    conversations = chitchat_conversations()
    first = next(conversations)
    assert first[0] == {"role": "user", "content": "Hello\nHow are you doing today?"}
    assert first[1]["role"] == "assistant" and first[1]["content"].startswith("whats up MD\nim doing good")
    assert all(message["role"] in ("user", "assistant") for message in first)
    assert sum(1 for _ in conversations) + 1 == 7168


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.txt", b"fine\nab\xffcd\n", r"bad.txt:2: not valid UTF-8 \(invalid start byte at byte 3 of the line\)"),
        ("bad.jsonl", b'{"text": "ok"}\n{"text": \n', r"bad.jsonl:2: invalid JSON"),
        ("field.jsonl", b'{"body": "x"}\n', r"field.jsonl:1: expected an object with a 'text' string or a 'messages'"),
        ("role.jsonl", b'{"messages": [{"role": "bot", "content": "x"}]}\n', r"role.jsonl:1: unknown role 'bot'"),
        ("empty.txt", b"", r"empty.txt: file is empty"),
        ("data.csv", b"a,b\n", r"data.csv: unsupported input type '.csv'"),
    ],
)
def test_bad_input_names_the_file_and_line(tmp_path, name, content, message):
    path = write(tmp_path / name, content)
    with pytest.raises(ValueError, match=message):
        list(iter_documents([path]))


def test_missing_inputs_fail_before_reading(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt: no such file or folder"):
        resolve_inputs([write(tmp_path / "a.txt", "x"), str(tmp_path / "nope.txt")])
