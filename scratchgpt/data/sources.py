"""Raw corpora as streams of documents.

A document is either a string (plain text) or a conversation: a list of ``{"role", "content"}`` messages with
roles system/user/assistant. Everything streams: files are read line by line, so memory stays bounded whatever the
corpus size. Bad input raises ``ValueError``/``FileNotFoundError`` naming the file (and line) and what is wrong.

Inputs understood by ``iter_documents``:

- ``.txt``: the text exactly as written (blank lines, indentation, trailing newline, Windows line ends), as one
  document per file (``text_documents="file"``, the default); or documents separated by a literal string
  (``text_documents="separator"``, ``document_separator="<|endoftext|>"`` by default: the separator is not kept, and
  neither is one line break on either side of it, so a separator on a line of its own leaves no trace); or
  documents separated by one or more blank lines (``text_documents="paragraph"``, for corpora where a blank line
  really ends a document);
- ``.jsonl``: one JSON object per line with a ``text`` string or a ``messages`` list;
- ``.parquet``: a ``text`` (string) or ``messages`` column, read in record batches;
- a folder: every file of those kinds under it, in sorted order; a glob pattern (``data/*.txt``) likewise;
- ``chitchat``: the built-in corpus of the ``chitchat-dataset`` package (7,168 human-to-human chats).

Invalid UTF-8 is rejected, not repaired: the error names the file and line, so a corpus is never silently altered.

A long text document is read in pieces of about ``PIECE_CHARS`` characters (``iter_document_pieces``), cut only
between a line that ends in a non-space character and a line that starts with one: there a byte-level BPE (GPT-2
style pre-tokenizer) and a character tokenizer give the same ids for the pieces as for the whole text, so a 10 GB
single-file corpus streams with bounded memory and still tokenizes exactly as one document.
"""

import codecs
import glob
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path


__all__ = [
    "CHITCHAT",
    "ROLES",
    "Document",
    "TEXT_DOCUMENTS",
    "DEFAULT_SEPARATOR",
    "PIECE_CHARS",
    "resolve_inputs",
    "describe_inputs",
    "iter_documents",
    "iter_document_pieces",
    "iter_texts",
    "chitchat_conversations",
]

CHITCHAT = "chitchat"
ROLES = ("system", "user", "assistant")
SUFFIXES = (".txt", ".jsonl", ".parquet")
TEXT_DOCUMENTS = ("file", "separator", "paragraph")
DEFAULT_SEPARATOR = "<|endoftext|>"
PIECE_CHARS = 8192  # small enough that a tokenizing batch of 1,000 records stays ~10 MB of text

Document = str | list[dict[str, str]]

logger = logging.getLogger(__name__)


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


# A line longer than this many characters is read in parts (see _lines); one with no place to cut for this long is
# cut anyway, so that memory stays bounded whatever the file
_HARD_CUT_CHARS = 64 * PIECE_CHARS
_MID_LINE_CUTS = re.compile(r"(?<=\S)(?=[ \t]+\S)")


def _mid_line_cut(text: str, separator: str | None) -> int | None:
    """The last place in ``text`` to cut a long line: before a run of spaces or tabs that follows a non-space
    character and precedes one (a pre-token boundary of GPT-2's byte-level BPE, and of course of a character
    tokenizer; see ``_safe_cut``), and not inside an occurrence of ``separator``."""
    # a separator that crosses the cut lies whole within the text when the cut is that far from its end
    last = len(text) - len(separator) + 1 if separator else len(text)
    for match in reversed(list(_MID_LINE_CUTS.finditer(text, 0, max(last, 0)))):
        cut = match.start()
        if not separator or not any(start < cut < start + len(separator) for start in
                                    _occurrences(text, separator, cut - len(separator) + 1, cut)):
            return cut
    return None


def _occurrences(text: str, separator: str, first: int, last: int):
    start = text.find(separator, max(first, 0))
    while start != -1 and start <= last:
        yield start
        start = text.find(separator, start + 1)


def _lines(path: str, cut_long_lines: bool = False, separator: str | None = None) -> Iterator[tuple[int, str]]:
    """(line number, text) pairs of a UTF-8 file, each line with its line end exactly as written. With
    ``cut_long_lines`` (plain text; a JSON line must stay whole), a line longer than ``PIECE_CHARS`` comes in several
    parts (same line number), cut by ``_mid_line_cut`` (at the latest after ``_HARD_CUT_CHARS`` characters), so a
    file that is one 10 GB line is read in bounded memory. Decoding is incremental, so invalid UTF-8 is reported
    with its exact line and byte column."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line_number, offset, pending = 1, 0, ""  # offset: bytes of this line read so far
    with open(path, "rb") as handle:
        while True:
            raw = handle.readline(PIECE_CHARS)
            held_back = len(decoder.getstate()[0])  # bytes of a character cut by the previous read
            try:
                pending += decoder.decode(raw, final=not raw or raw.endswith(b"\n"))
            except UnicodeDecodeError as error:
                raise ValueError(f"{path}:{line_number}: not valid UTF-8 ({error.reason} at byte "
                                 f"{offset - held_back + error.start + 1} of the line); re-encode the file as "
                                 f"UTF-8") from None
            offset += len(raw)
            if not raw or raw.endswith(b"\n"):
                if pending:
                    yield line_number, pending
                if not raw:
                    return
                line_number, offset, pending = line_number + 1, 0, ""
                continue
            if cut_long_lines and len(pending) > PIECE_CHARS:
                cut = _mid_line_cut(pending, separator)
                if cut is None and len(pending) > _HARD_CUT_CHARS:
                    logger.warning("%s:%d: %s characters without a space or tab to cut at; cut there (the tokens "
                                   "at the cut may differ from those of the whole line)", path, line_number,
                                   f"{len(pending):,}")
                    cut = len(pending) - 1
                if cut:
                    yield line_number, pending[:cut]
                    pending = pending[cut:]


# A text segment, and what follows it: None (the document goes on), _END (the document ends) or _END_TRIM (the
# document ends, without one line break at its end).
_END, _END_TRIM = "end", "end-trim"


def _text_segments(path: str, text_documents: str, separator: str) -> Iterator[tuple[str, str | None]]:
    lines = (line for _, line in _lines(path, True, separator if text_documents == "separator" else None))
    if text_documents == "file":
        yield from ((line, None) for line in lines)
        yield "", _END
    elif text_documents == "paragraph":
        in_paragraph = False
        for line in lines:
            if line.strip():
                in_paragraph = True
                yield line, None
            elif in_paragraph:
                in_paragraph = False
                yield "", _END_TRIM
        if in_paragraph:
            yield "", _END_TRIM
    else:
        drop_line_break = False  # set after a separator: one line break right after it belongs to it
        for line in lines:
            for i, part in enumerate(line.split(separator)):
                if i > 0:  # a separator stood before this part: the document before it ends there
                    yield "", _END_TRIM
                    drop_line_break = True
                if drop_line_break and part:
                    part = part[2:] if part.startswith("\r\n") else part.removeprefix("\n")
                    drop_line_break = False
                if part:
                    yield part, None
        yield "", _END


def _safe_cut(before: str, after: str) -> bool:
    """Whether a document may be cut between ``before`` and ``after`` without changing its token ids (see the module
    docstring): ``before`` ends a line with a non-space character and ``after`` starts with one; or, between the
    parts of a long line (``_lines``), ``before`` ends with a non-space character and ``after`` starts with the
    spaces or tabs before the next one. GPT-2's pre-tokenizer always starts a new pre-token at such a place and
    looks at nothing before it, and a character tokenizer has no context at all."""
    between_lines = (len(before) >= 2 and before[-1] == "\n" and not before[-2].isspace()
                     and after[:1] != "" and not after[0].isspace())
    inside_a_line = before[-1:] != "" and not before[-1].isspace() and after[:1] in (" ", "\t")
    return between_lines or inside_a_line


def _text_pieces(path: str, text_documents: str, separator: str) -> Iterator[tuple[str, bool]]:
    buffer: list[str] = []
    size, continued = 0, False
    for text, end in _text_segments(path, text_documents, separator):
        if text:
            if size >= PIECE_CHARS and (_safe_cut(buffer[-1], text) or size >= _HARD_CUT_CHARS):
                yield "".join(buffer), False
                buffer, size, continued = [], 0, True
            buffer.append(text)
            size += len(text)
        if end is not None:
            document = "".join(buffer)
            if end == _END_TRIM:
                document = document[:-2] if document.endswith("\r\n") else document.removesuffix("\n")
            if document or continued:
                yield document, True
            buffer, size, continued = [], 0, False


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
        except RecursionError:
            raise ValueError(f"{where}: JSON nested too deeply to read") from None
        if isinstance(record, dict) and isinstance(record.get("text"), str):
            yield record["text"]
        elif isinstance(record, dict) and "messages" in record:
            yield _check_messages(record["messages"], where)
        else:
            raise ValueError(f"{where}: expected an object with a 'text' string or a 'messages' list")


def _parquet_documents(path: str) -> Iterator[Document]:
    import pyarrow as pa

    try:
        yield from _parquet_rows(path)
    except pa.ArrowException as error:  # not parquet, truncated, or a column of an unexpected type
        raise ValueError(f"{path}: not a readable parquet file ({str(error).splitlines()[0]})") from None


def _parquet_rows(path: str) -> Iterator[Document]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    column = next((name for name in ("text", "messages") if name in parquet.schema_arrow.names), None)
    if column is None:
        found = ", ".join(parquet.schema_arrow.names)
        raise ValueError(f"{path}: expected a 'text' or 'messages' column, found {found}")
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


def check_text_options(text_documents: str, document_separator: str = DEFAULT_SEPARATOR) -> None:
    """Raise ``ValueError`` (one line) for an unknown ``text_documents`` mode or an unusable separator."""
    if text_documents not in TEXT_DOCUMENTS:
        raise ValueError(f"text_documents must be one of {', '.join(TEXT_DOCUMENTS)}; got {text_documents!r}")
    if text_documents == "separator" and (not document_separator or "\n" in document_separator):
        raise ValueError(f"document_separator must be a non-empty string without line breaks; got "
                         f"{document_separator!r}")


def iter_document_pieces(paths: Iterable[str], text_documents: str = "file",
                         document_separator: str = DEFAULT_SEPARATOR) -> Iterator[tuple[Document, bool]]:
    """Every document of every input, in order, as ``(piece, ends_document)`` pairs: a long text document comes in
    several pieces (see the module docstring), every other document as one piece with ``ends_document`` true.
    Inputs are checked up front (see ``resolve_inputs``)."""
    check_text_options(text_documents, document_separator)
    for path in resolve_inputs(paths):
        if path == CHITCHAT:
            yield from ((conversation, True) for conversation in chitchat_conversations())
        elif path.endswith(".jsonl"):
            yield from ((document, True) for document in _jsonl_documents(path))
        elif path.endswith(".parquet"):
            yield from ((document, True) for document in _parquet_documents(path))
        else:
            yield from _text_pieces(path, text_documents, document_separator)


def iter_documents(paths: Iterable[str], text_documents: str = "file",
                   document_separator: str = DEFAULT_SEPARATOR) -> Iterator[Document]:
    """Every document of every input, in order, whole (a long text document is held in memory in one string; use
    ``iter_document_pieces`` to stream it)."""
    pieces: list[str] = []
    for piece, ends_document in iter_document_pieces(paths, text_documents, document_separator):
        if ends_document:
            yield "".join([*pieces, piece]) if pieces else piece
            pieces = []
        else:
            pieces.append(piece)


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
