"""Raw corpora as streams of documents.

A document is either a string (plain text) or a conversation: a list of ``{"role", "content"}`` messages with
roles system/user/assistant. Everything streams: files are read line by line, so memory stays bounded whatever the
corpus size. Bad input raises ``ValueError``/``FileNotFoundError`` naming the file (and line) and what is wrong.

Inputs understood by ``iter_documents``:

- ``.txt``: documents separated by one or more blank lines (``text_documents="paragraph"``, the default), or one
  document per file (``text_documents="file"``);
- ``.jsonl``: one JSON object per line with a ``text`` string or a ``messages`` list;
- ``.parquet``: a ``text`` (string) or ``messages`` column, read in record batches;
- a folder: every file of those kinds under it, in sorted order; a glob pattern (``data/*.txt``) likewise;
- ``chitchat``: the built-in corpus of the ``chitchat-dataset`` package (7,168 human-to-human chats).

Invalid UTF-8 is rejected, not repaired: the error names the file and line, so a corpus is never silently altered.
"""

import glob
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path


__all__ = [
    "CHITCHAT",
    "ROLES",
    "Document",
    "resolve_inputs",
    "describe_inputs",
    "iter_documents",
    "iter_texts",
    "chitchat_conversations",
]

CHITCHAT = "chitchat"
ROLES = ("system", "user", "assistant")
SUFFIXES = (".txt", ".jsonl", ".parquet")

Document = str | list[dict[str, str]]


def resolve_inputs(paths: Iterable[str]) -> list[str]:
    """Expand folders and glob patterns into files; raise for anything missing, empty or of an unknown kind."""
    files = []
    for path in paths:
        if path == CHITCHAT:
            files.append(path)
            continue
        p = Path(path)
        if p.is_dir() or (glob.has_magic(path) and not p.exists()):
            candidates = p.rglob("*") if p.is_dir() else map(Path, glob.glob(path, recursive=True))
            found = sorted(str(f) for f in candidates if f.is_file() and f.suffix in SUFFIXES)
            if not found:
                raise ValueError(f"{path}: matches no .txt, .jsonl or .parquet files")
            files.extend(found)
        elif not p.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        elif p.suffix not in SUFFIXES:
            raise ValueError(f"{path}: unsupported input type {p.suffix or '(no suffix)'!r}; "
                             f"use .txt, .jsonl or .parquet")
        elif p.stat().st_size == 0:
            raise ValueError(f"{path}: file is empty")
        else:
            files.append(path)
    return files


def _lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number, line) pairs of a UTF-8 file, with Windows line ends read as "\n". Lines are decoded one at a
    time so invalid UTF-8 is reported with its exact line and byte column."""
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(f"{path}:{line_number}: not valid UTF-8 ({error.reason} at byte {error.start + 1} "
                                 f"of the line); re-encode the file as UTF-8") from None
            yield line_number, line[:-2] + "\n" if line.endswith("\r\n") else line


def _text_documents(path: str, text_documents: str) -> Iterator[str]:
    if text_documents == "file":
        text = "".join(line for _, line in _lines(path))
        if text.strip():
            yield text
        return
    paragraph: list[str] = []
    for _, line in _lines(path):
        if line.strip():
            paragraph.append(line)
        elif paragraph:
            yield "".join(paragraph).rstrip("\n")
            paragraph = []
    if paragraph:
        yield "".join(paragraph).rstrip("\n")


def _check_messages(messages, where: str) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: 'messages' must be a non-empty list")
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise ValueError(f"{where}: each message needs a string 'content'")
        if message.get("role") not in ROLES:
            raise ValueError(f"{where}: unknown role {message.get('role')!r}; expected one of {', '.join(ROLES)}")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _jsonl_documents(path: str) -> Iterator[Document]:
    for line_number, line in _lines(path):
        if not line.strip():
            continue
        where = f"{path}:{line_number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: invalid JSON ({error.msg} at column {error.colno})") from None
        if isinstance(record, dict) and isinstance(record.get("text"), str):
            yield record["text"]
        elif isinstance(record, dict) and "messages" in record:
            yield _check_messages(record["messages"], where)
        else:
            raise ValueError(f"{where}: expected an object with a 'text' string or a 'messages' list")


def _parquet_documents(path: str) -> Iterator[Document]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    column = next((name for name in ("text", "messages") if name in parquet.schema_arrow.names), None)
    if column is None:
        raise ValueError(f"{path}: expected a 'text' or 'messages' column, found {', '.join(parquet.schema_arrow.names)}")
    row = 0
    for batch in parquet.iter_batches(columns=[column], batch_size=1024):
        for value in batch.column(0).to_pylist():
            row += 1
            if column == "text":
                if not isinstance(value, str):
                    raise ValueError(f"{path}: row {row}: 'text' is not a string")
                yield value
            else:
                yield _check_messages(value, f"{path}: row {row}")


def _chitchat_file() -> str:
    import chitchat_dataset

    return os.path.join(os.path.dirname(chitchat_dataset.__file__), "dataset.json")


def chitchat_conversations() -> Iterator[list[dict[str, str]]]:
    """The chitchat corpus as conversations: a turn (consecutive utterances of one sender, joined by newlines)
    becomes one message; the first speaker is the user, the other the assistant."""
    with open(_chitchat_file(), encoding="utf-8") as f:
        chats = json.load(f)
    for chat in chats.values():
        first_sender = None
        conversation = []
        for turn in chat["messages"]:
            if not turn:
                continue
            first_sender = first_sender or turn[0]["sender"]
            role = "user" if turn[0]["sender"] == first_sender else "assistant"
            conversation.append({"role": role, "content": "\n".join(u["text"] for u in turn)})
        if conversation:
            yield conversation


def iter_documents(paths: Iterable[str], text_documents: str = "paragraph") -> Iterator[Document]:
    """Every document of every input, in order. Inputs are checked up front (see ``resolve_inputs``)."""
    if text_documents not in ("paragraph", "file"):
        raise ValueError(f"text_documents must be 'paragraph' or 'file', got {text_documents!r}")
    for path in resolve_inputs(paths):
        if path == CHITCHAT:
            yield from chitchat_conversations()
        elif path.endswith(".jsonl"):
            yield from _jsonl_documents(path)
        elif path.endswith(".parquet"):
            yield from _parquet_documents(path)
        else:
            yield from _text_documents(path, text_documents)


def describe_inputs(files: Iterable[str]) -> list[dict]:
    """Path, size and modification time of each resolved input: what decides whether prepared data is stale."""
    described = []
    for path in files:
        real = _chitchat_file() if path == CHITCHAT else path
        stat = os.stat(real)
        described.append({"path": path if path == CHITCHAT else os.path.abspath(path), "size": stat.st_size,
                          "mtime": stat.st_mtime})
    return described


def iter_texts(documents: Iterable[Document]) -> Iterator[str]:
    """Plain strings of documents: a text as is, a conversation as the contents of its messages."""
    for document in documents:
        if isinstance(document, str):
            yield document
        else:
            yield from (message["content"] for message in document)
