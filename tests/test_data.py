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
        ("data.md", b"a,b\n", r"data.md: unsupported input type '.md'"),
        # a JSON array, with the line of what is wrong
        ("bad.json", '[{"text": "a"},\n {"text": ]', r"bad.json:2: invalid JSON"),
        ("bad.json", '[{"text": "a"}\n {"text": "b"}]',
         r"bad.json:2: expected ',' or ']' between the array's elements"),
        ("bad.json", '[{"text": "a"}] extra', r"bad.json:1: text after the end of the JSON array"),
        ("bad.json", '[{"text": "a"}, {"body": "b"}]', r"bad.json: element 2: expected an object with a 'text' string"),
        ("bad.json", '[{"text": "a"}', r"bad.json:1: expected ',' or ']'"),
        # CSV
        ("data.csv", "id,body\n1,x\n", r"data.csv: expected a 'text' column, found id, body"),
        ("data.csv", 'text,id\n"a",1\n"b"\n', r"data.csv:3: 1 fields, but the header names 2"),
        ("data.csv", 'text\n"a\n', r"data.csv:2: not valid CSV"),
    ],
)
def test_bad_input_names_the_file_and_line(tmp_path, name, content, message):
    path = write(tmp_path / name, content)
    with pytest.raises(ValueError, match=message):
        list(iter_documents([path]))


def test_missing_inputs_fail_before_reading(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt: no such file or folder"):
        resolve_inputs([write(tmp_path / "a.txt", "x"), str(tmp_path / "nope.txt")])


# --- compressed files, JSON arrays, CSV ------------------------------------------------------------------------------


def compress(data: bytes, suffix: str) -> bytes:
    import bz2
    import gzip
    import lzma

    import zstandard

    return {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress,
            ".zst": zstandard.ZstdCompressor().compress}[suffix](data)


CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello\nthere"}]}


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz", ".zst"])
def test_compressed_inputs_read_exactly_as_the_plain_files(tmp_path, suffix, monkeypatch):
    monkeypatch.setattr(sources, "PIECE_CHARS", 40)  # several reads per line, and long documents in pieces
    files = {"a.txt": (PLAY * 20).encode(), "b.jsonl": f"{json.dumps({'text': PLAY})}\n{json.dumps(CHAT)}\n".encode(),
             "c.csv": b'text,n\r\n"two\nlines",1\r\nplain,2\r\n'}
    plain = [write_into(tmp_path / "plain" / name, data) for name, data in files.items()]
    packed = [write_into(tmp_path / "packed" / (name + suffix), compress(data, suffix)) for name, data in files.items()]
    for mode in ("file", "paragraph", "separator"):
        pieces = list(iter_document_pieces(packed, mode))
        assert pieces == list(iter_document_pieces(plain, mode)) and len(pieces) > 10, mode


RESUMABLE = {"a.txt": (PLAY * 4 + ONE_LINE + "\n" + PLAY.replace("<|endoftext|>", "<|endoftext|>\n") * 4).encode(),
             "b.jsonl": "".join(f"{json.dumps(record)}\n\n" for record in [{"text": PLAY}, CHAT] * 5).encode()}


@pytest.mark.parametrize("suffix", ["", ".gz", ".zst"])
@pytest.mark.parametrize("mode", ["file", "paragraph", "separator"])
def test_reading_from_any_resume_point_yields_the_rest_exactly(tmp_path, monkeypatch, suffix, mode):
    monkeypatch.setattr(sources, "PIECE_CHARS", 40)  # long documents in pieces, long lines in parts
    for name, data in RESUMABLE.items():
        path = write_into(tmp_path / (name + suffix), compress(data, suffix) if suffix else data)
        pieces = list(sources.document_pieces(path, mode))
        points = [i for i, (_, _, point) in enumerate(pieces) if point is not None]
        assert len(points) > 5 and (len(points) < len(pieces) or name == "b.jsonl"), name  # long-line parts: none
        for i in points:
            assert list(sources.document_pieces(path, mode, resume_at=pieces[i][2])) == pieces[i:], (name, i)


def test_resume_points_are_refused_for_formats_read_whole(tmp_path):
    path = write(tmp_path / "a.csv", "text\nhello\n")
    assert [point for _, _, point in sources.document_pieces(path)] == [None]
    with pytest.raises(ValueError, match="a.csv: only .txt and .jsonl inputs are read from a resume point"):
        list(sources.document_pieces(path, resume_at=[5, 2, False]))


def write_into(path, content: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    return write(path, content)


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz", ".zst"])
def test_a_damaged_compressed_file_is_named_in_one_line(tmp_path, suffix):
    whole = compress(("some text of a corpus\n" * 5000).encode(), suffix)
    path = write(tmp_path / f"cut.txt{suffix}", whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=rf"cut.txt{suffix}: not a readable {suffix} file .*damaged or cut short"):
        list(iter_documents([path]))


def test_invalid_utf8_in_a_compressed_file_names_its_line_and_byte(tmp_path):
    path = write(tmp_path / "bad.txt.gz", compress(b"fine\nab\xffcd\n", ".gz"))
    with pytest.raises(ValueError, match=r"bad.txt.gz:2: not valid UTF-8 \(invalid start byte at byte 3 of the line"):
        list(iter_documents([path]))


@pytest.mark.parametrize("layout", ["indented", "minified", "lines"])
def test_json_arrays_stream_element_by_element(tmp_path, monkeypatch, layout):
    monkeypatch.setattr(sources, "JSON_CHUNK_BYTES", 7)  # elements cross every chunk boundary
    records = [{"text": PLAY}, CHAT, {"text": "é😀 last"}]
    text = {"indented": json.dumps(records, indent=2, ensure_ascii=False),
            "minified": json.dumps(records, separators=(",", ":"), ensure_ascii=False),
            "lines": "\n".join(json.dumps(r) for r in records)}[layout]
    path = write(tmp_path / "data.json", "\n " + text + "\n")
    assert list(iter_documents([path])) == [PLAY, CHAT["messages"], "é😀 last"]


def test_an_unterminated_json_element_stops_at_the_size_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "JSON_CHUNK_BYTES", 64)
    monkeypatch.setattr(sources, "_MAX_JSON_ELEMENT_CHARS", 1000)
    reads = []
    original = sources._text_chunks

    def counted(path):
        for chunk in original(path):
            reads.append(len(chunk))
            yield chunk

    monkeypatch.setattr(sources, "_text_chunks", counted)
    path = write(tmp_path / "open.json", '[{"text": "' + "x" * 100_000)
    with pytest.raises(ValueError, match=r"open.json:1: invalid JSON \(Unterminated string"):
        list(iter_documents([path]))
    assert sum(reads) < 2000  # stopped near the limit, not at the end of the file


def test_csv_text_column_verbatim(tmp_path):
    content = '\ufeffid,text\n1,"Hello, world"\n2,"two\nlines ""quoted"""\n\n3,\n'
    path = write(tmp_path / "data.csv", content)
    assert list(iter_documents([path])) == ["Hello, world", 'two\nlines "quoted"', ""]


def test_input_formats_by_name(tmp_path):
    assert sources.input_format("dump.jsonl.zst") == (".jsonl", ".zst")
    assert sources.input_format("my.book.txt") == (".txt", None)
    assert sources.input_format("a.parquet.gz") == (None, ".gz")
    write(tmp_path / "notes.md.gz", b"x")
    with pytest.raises(ValueError, match=r"notes.md.gz: unsupported input type '.md.gz'"):
        resolve_inputs([str(tmp_path / "notes.md.gz")])


def test_folders_leave_plain_json_and_csv_to_be_named(tmp_path):
    """A corpus folder often holds a tokenizer's or a model's .json files: folders take .json and .csv only
    compressed; a glob or a name takes them as they are."""
    write(tmp_path / "a.jsonl", '{"text": "one"}\n')
    write_into(tmp_path / "tokenizer" / "tokenizer.json", b"{}")
    write(tmp_path / "table.csv", "text\ntwo\n")
    write(tmp_path / "b.csv.gz", compress(b"text\nthree\n", ".gz"))
    assert list(iter_documents([str(tmp_path)])) == ["one", "three"]
    assert list(iter_documents([str(tmp_path / "*.csv")])) == ["two"]


# --- the tokenizer's sample -----------------------------------------------------------------------------------------


def numbered_lines(name: str, n: int) -> str:
    return "".join(f"{name} line {i:05d} of some words here\n" for i in range(n))


def test_a_corpus_within_the_cap_is_taken_whole_without_a_counting_pass(tmp_path, monkeypatch):
    path = write(tmp_path / "a.txt", numbered_lines("a", 100))
    sample = sources.TextSample([path], max_bytes=10**6)
    monkeypatch.setattr(sources.TextSample, "_texts", lambda self: pytest.fail("read twice"), raising=True)
    assert sample.total is None and sample.fraction == 1.0
    monkeypatch.undo()
    assert "".join(sample) == numbered_lines("a", 100)
    assert sample.report() == {"max_bytes": 10**6, "corpus_bytes": 3200, "sampled_bytes": 3200, "fraction": 1.0}


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gz"])
def test_the_sample_is_bounded_and_spread_over_every_file_and_all_of_each(tmp_path, monkeypatch, compressed):
    monkeypatch.setattr(sources, "PIECE_CHARS", 200)  # a file in many pieces
    paths = []
    for name in ("a", "b", "c"):
        data = numbered_lines(name, 2000).encode()  # 64,000 bytes each
        suffix = ".txt.gz" if compressed else ".txt"
        paths.append(write(tmp_path / f"{name}{suffix}", compress(data, ".gz") if compressed else data))
    sample = sources.TextSample(paths, max_bytes=19_200)  # a tenth of the corpus
    taken = "".join(sample)
    assert sample.total == 192_000 and 0.9 * 19_200 <= sample.taken <= 19_200 == sample.max_bytes
    assert len(taken.encode()) == sample.taken
    for name in ("a", "b", "c"):
        numbers = [int(line.split()[2]) for line in taken.splitlines() if line.startswith(f"{name} line ")]
        assert min(numbers) < 200 and max(numbers) > 1800  # from the start to the end of every file
        assert 150 <= len(numbers) <= 250  # about a tenth of its lines


def test_tokenizer_train_samples_and_says_so(tmp_path, capsys):
    from scratchgpt.cli import main

    path = write(tmp_path / "a.txt", numbered_lines("a", 3000))
    assert main(["tokenizer", "train", "--input", path, "--train-bytes", "30K", "--vocab-size", "300",
                 "--output", str(tmp_path / "tok")]) == 0
    assert "trained on 0.0 MB of 0.1 MB of text, taken evenly over every input" in capsys.readouterr().out
    report = json.loads((tmp_path / "tok" / sources.SAMPLE_REPORT).read_text())
    assert report["corpus_bytes"] == 96_000 and 20_000 < report["sampled_bytes"] <= 30_000  # pieces of 8 KB
    assert report["inputs"] == [path]


@pytest.mark.parametrize("text, expected", [("500M", 500_000_000), ("2G", 2_000_000_000), ("1.5k", 1500),
                                            ("0", 0), ("12345", 12345), ("3 GB", 3_000_000_000)])
def test_byte_counts_on_the_command_line(text, expected):
    from scratchgpt.cli import _byte_count

    assert _byte_count(text) == expected


def test_a_bad_byte_count_is_refused(tmp_path, capsys):
    from scratchgpt.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["tokenizer", "train", "--input", "chitchat", "--train-bytes", "lots", "--output", str(tmp_path / "t")])
    assert exit_.value.code == 2
    assert "expected a number of bytes such as 500M or 2G, got 'lots'" in capsys.readouterr().err
