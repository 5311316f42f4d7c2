import json

import pytest

from scratchgpt.data.sources import chitchat_conversations, iter_documents, iter_texts, resolve_inputs


def write(path, content: str | bytes):
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return str(path)


def test_text_files_split_on_blank_lines(tmp_path):
    path = write(tmp_path / "a.txt", "first line\nstill first\n\n\n second\r\n\r\nthird")
    assert list(iter_documents([path])) == ["first line\nstill first", " second", "third"]


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
