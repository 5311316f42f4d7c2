"""Raw corpora as streams of documents.

A document is either a string (plain text) or a conversation: a list of ``{"role", "content"}`` messages with
roles system/user/assistant (see ``records``). Everything streams: files are read line by line, so memory stays
bounded whatever the corpus size. Bad input raises ``ValueError``/``FileNotFoundError`` naming the file (and line)
and what is wrong.

Inputs understood by ``iter_documents``:

- ``.txt``: the text exactly as written (blank lines, indentation, trailing newline, Windows line ends), as one
  document per file (``text_documents="file"``, the default); or documents separated by a literal string
  (``text_documents="separator"``, ``document_separator="<|endoftext|>"`` by default: the separator is not kept, and
  neither is one line break on either side of it, so a separator on a line of its own leaves no trace); or
  documents separated by one or more blank lines (``text_documents="paragraph"``, for corpora where a blank line
  really ends a document);
- ``.jsonl``: one JSON object per line with a ``text`` string or a ``messages`` list;
- ``.json``: the same objects as one JSON array (read element by element), or as JSON lines;
- ``.csv``: a ``text`` column (a header line names the columns; quoted cells keep their line breaks);
- ``.parquet``: a ``text`` (string) or ``messages`` column, read in record batches;
- any of those but parquet compressed, decompressed as it is read: ``.gz``, ``.bz2``, ``.xz`` (Python's own gzip,
  bz2 and lzma) and ``.zst`` (Zstandard, with the ``zstandard`` package), e.g. ``dump.jsonl.zst``;
- a folder: every file of those kinds under it, in sorted order, but plain ``.json`` and ``.csv`` files (as often
  settings or tables as corpora: name them, or match them with a glob); a glob pattern (``data/*.txt``): every
  file of those kinds it matches;
- ``chitchat``: the built-in corpus of the ``chitchat-dataset`` package (7,168 human-to-human chats);
- ``hf://datasets/ORG/NAME``: a dataset on the Hugging Face Hub, streamed row by row (see ``hub_datasets``).

Invalid UTF-8 is rejected, not repaired: the error names the file and line, so a corpus is never silently altered.

A long text document is read in pieces of about ``PIECE_CHARS`` characters (``iter_document_pieces``), cut only
between a line that ends in a non-space character and a line that starts with one: there a byte-level BPE (GPT-2
style pre-tokenizer) and a character tokenizer give the same ids for the pieces as for the whole text, so a 10 GB
single-file corpus streams with bounded memory and still tokenizes exactly as one document. ``document_pieces``
also says where reading can resume (a byte offset): what lets a resumed ``prepare`` seek past the part of a large
file it has already done.
"""

import bz2
import codecs
import csv
import functools
import glob
import gzip
import io
import json
import logging
import lzma
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from .hub_datasets import HubDataset, is_hub_input
from .records import ROLES, Document, check_messages, record_document


__all__ = [
    "CHITCHAT",
    "ROLES",
    "Document",
    "TEXT_DOCUMENTS",
    "DEFAULT_SEPARATOR",
    "PIECE_CHARS",
    "input_format",
    "resolve_inputs",
    "describe_inputs",
    "dataset_validation_inputs",
    "is_hub_input",
    "iter_documents",
    "iter_document_pieces",
    "document_pieces",
    "iter_texts",
    "chitchat_conversations",
    "SAMPLE_REPORT",
    "TOKENIZER_TRAIN_BYTES",
    "TextSample",
]

CHITCHAT = "chitchat"
SUFFIXES = (".txt", ".jsonl", ".json", ".csv", ".parquet")
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
TEXT_DOCUMENTS = ("file", "separator", "paragraph")
DEFAULT_SEPARATOR = "<|endoftext|>"
PIECE_CHARS = 8192  # small enough that a tokenizing batch of 1,000 records stays ~10 MB of text
# the most text a tokenizer trains on by default (see TextSample and BENCHMARKS.md for the memory it takes)
TOKENIZER_TRAIN_BYTES = 500_000_000
SAMPLE_REPORT = "tokenizer_sample.json"  # written beside a trained tokenizer: how much of the corpus it saw

logger = logging.getLogger(__name__)


def input_format(path: str) -> tuple[str | None, str | None]:
    """(format, compression) of an input by its name: ``dump.jsonl.zst`` -> (".jsonl", ".zst"), ``a.txt`` ->
    (".txt", None); a format of None is not one we read (parquet is read only uncompressed)."""
    suffixes = Path(path).suffixes
    compression = suffixes[-1] if suffixes and suffixes[-1] in COMPRESSIONS else None
    kind = (suffixes[-2] if len(suffixes) >= 2 else None) if compression else (suffixes[-1] if suffixes else None)
    if kind not in SUFFIXES or (kind == ".parquet" and compression):
        return None, compression
    return kind, compression


_KNOWN = ".txt, .jsonl, .json, .csv or .parquet (the first four also as .gz, .bz2, .xz or .zst)"
_NOT_IN_FOLDERS = (".json", ".csv")  # uncompressed, found in a folder: a tokenizer's, a model's or a table's files


def _in_folder(path: Path) -> bool:
    kind, compression = input_format(path.name)
    return kind is not None and (compression is not None or kind not in _NOT_IN_FOLDERS)


@functools.lru_cache(maxsize=64)
def _resolve_hub_input(entry: str) -> str:
    return HubDataset.parse(entry).resolved().uri()


def resolve_inputs(paths: Iterable[str]) -> list[str]:
    """Expand folders and glob patterns into files, and pin a Hub dataset's revision to its commit (see
    ``hub_datasets``); raise for anything missing, empty or of an unknown kind."""
    files = []
    for path in paths:
        if path == CHITCHAT:
            files.append(path)
            continue
        if is_hub_input(path):
            files.append(_resolve_hub_input(path))
            continue
        p = Path(path)
        if p.is_dir() or (glob.has_magic(path) and not p.exists()):
            if p.is_dir():
                found = sorted(str(f) for f in p.rglob("*") if f.is_file() and _in_folder(f))
            else:
                found = sorted(f for f in glob.glob(path, recursive=True)
                               if os.path.isfile(f) and input_format(f)[0])
            if not found:
                raise ValueError(f"{path}: matches no {_KNOWN} files")
            files.extend(found)
        elif not p.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        elif input_format(p.name)[0] is None:
            kind = "".join(p.suffixes[-2:]) or "(no suffix)"
            raise ValueError(f"{path}: unsupported input type {kind!r}; use {_KNOWN}")
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


def _open(path: str):
    """The file's bytes as a binary stream with ``readline``, decompressed as they are read."""
    compression = input_format(path)[1]
    if compression == ".gz":
        return gzip.open(path, "rb")
    if compression == ".bz2":
        return bz2.open(path, "rb")
    if compression == ".xz":
        return lzma.open(path, "rb")
    if compression == ".zst":
        return io.BufferedReader(_ZstdStream(path))
    return open(path, "rb")


class _ZstdStream(io.RawIOBase):
    """A Zstandard file decompressed as it is read, frame after frame. The zstandard package's own ``stream_reader``
    ends quietly where a cut-short file ends; this says so (``zstandard.ZstdError``)."""

    def __init__(self, path: str):
        try:
            import zstandard
        except ImportError:
            raise ValueError(f"{path}: reading .zst files needs the zstandard package: pip install zstandard") from None
        self._zstandard, self._file = zstandard, open(path, "rb")
        self._frame, self._in_frame, self._out = zstandard.ZstdDecompressor().decompressobj(), False, b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._out:
            if self._frame.eof:  # the next frame starts with what the last one left over
                rest = self._frame.unused_data
                self._frame, self._in_frame = self._zstandard.ZstdDecompressor().decompressobj(), False
                if rest:
                    self._in_frame, self._out = True, self._frame.decompress(rest)
                    continue
            chunk = self._file.read(2**16)
            if not chunk:
                if self._in_frame and not self._frame.eof:
                    raise self._zstandard.ZstdError("the file ends inside a frame")
                return 0
            self._in_frame, self._out = True, self._frame.decompress(chunk)
        size = min(len(buffer), len(self._out))
        buffer[:size], self._out = self._out[:size], self._out[size:]
        return size

    def close(self) -> None:
        self._file.close()
        super().close()


def _decompression_errors() -> tuple[type[BaseException], ...]:
    """What the decompressors raise for a damaged or truncated file (gzip's BadGzipFile is an OSError)."""
    errors = [OSError, EOFError, lzma.LZMAError]
    try:
        import zstandard

        errors.append(zstandard.ZstdError)
    except ImportError:
        pass
    return tuple(errors)


def _read(path: str, handle, size: int, whole_lines: bool = True) -> bytes:
    """``handle.readline(size)`` (or ``read``), with a damaged compressed file's error in one line naming it."""
    try:
        return handle.readline(size) if whole_lines else handle.read(size)
    except _decompression_errors() as error:
        compression = input_format(path)[1]
        if compression is None:
            raise
        raise ValueError(f"{path}: not a readable {compression} file ({error}); is it damaged or cut short?") from None


def _skip_bytes(path: str, handle, size: int) -> None:
    """Move ``handle`` ``size`` bytes on from the file's start: a seek where the stream has one (a plain file; the
    gzip, bz2 and lzma readers decompress up to it), else by reading (Zstandard)."""
    if handle.seekable():
        handle.seek(size)
        return
    while size > 0:
        chunk = _read(path, handle, min(size, 2**20), whole_lines=False)
        if not chunk:
            return
        size -= len(chunk)


def _lines(path: str, cut_long_lines: bool = False, separator: str | None = None,
           start: tuple[int, int] = (0, 1)) -> Iterator[tuple[int, str, int | None]]:
    """(line number, text, where the line starts) triples of a UTF-8 file, each line with its line end exactly as
    written. With ``cut_long_lines`` (plain text; a JSON line must stay whole), a line longer than ``PIECE_CHARS``
    comes in several parts (same line number), cut by ``_mid_line_cut`` (at the latest after ``_HARD_CUT_CHARS``
    characters), so a file that is one 10 GB line is read in bounded memory; where the line starts is its byte
    offset in the (decompressed) file for a text that begins a line, None for a later part. ``start`` (such an
    offset and its line number) reads from there on. Decoding is incremental, so invalid UTF-8 is reported with its
    exact line and byte column."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line_start, line_number = start
    offset, pending, whole = 0, "", True  # offset: bytes of this line read so far; whole: none of it yielded yet
    with _open(path) as handle:
        if line_start:
            _skip_bytes(path, handle, line_start)
        while True:
            raw = _read(path, handle, PIECE_CHARS)
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
                    yield line_number, pending, line_start if whole else None
                if not raw:
                    return
                line_number, line_start, offset, pending, whole = line_number + 1, line_start + offset, 0, "", True
                continue
            if cut_long_lines and len(pending) > PIECE_CHARS:
                cut = _mid_line_cut(pending, separator)
                if cut is None and len(pending) > _HARD_CUT_CHARS:
                    logger.warning("%s:%d: %s characters without a space or tab to cut at; cut there (the tokens "
                                   "at the cut may differ from those of the whole line)", path, line_number,
                                   f"{len(pending):,}")
                    cut = len(pending) - 1
                if cut:
                    yield line_number, pending[:cut], line_start if whole else None
                    pending, whole = pending[cut:], False


# A text segment, and what follows it: None (the document goes on), _END (the document ends) or _END_TRIM (the
# document ends, without one line break at its end).
_END, _END_TRIM = "end", "end-trim"


def _text_segments(path: str, text_documents: str, separator: str,
                   start: tuple[int, int] = (0, 1)) -> Iterator[tuple[str, str | None, tuple[int, int] | None]]:
    """``(text, what follows it, where)`` for the segments of a text file: ``where`` is ``(byte offset, line
    number)`` of a segment that begins a line, from which reading again (``start``) yields it first, in the same
    state: no mode carries anything from one line to the next into a segment that begins one."""
    lines = _lines(path, True, separator if text_documents == "separator" else None, start)
    if text_documents == "file":
        yield from ((line, None, None if begins is None else (begins, number)) for number, line, begins in lines)
        yield "", _END, None
    elif text_documents == "paragraph":
        in_paragraph = False
        for number, line, begins in lines:
            if line.strip():
                in_paragraph = True
                yield line, None, None if begins is None else (begins, number)
            elif in_paragraph:
                in_paragraph = False
                yield "", _END_TRIM, None
        if in_paragraph:
            yield "", _END_TRIM, None
    else:
        drop_line_break = False  # set after a separator: one line break right after it belongs to it
        for number, line, begins in lines:
            for i, part in enumerate(line.split(separator)):
                if i > 0:  # a separator stood before this part: the document before it ends there
                    yield "", _END_TRIM, None
                    drop_line_break = True
                if drop_line_break and part:  # a line break can only open a line that is nothing else
                    part = part[2:] if part.startswith("\r\n") else part.removeprefix("\n")
                    drop_line_break = False
                if part:
                    yield part, None, None if i > 0 or begins is None else (begins, number)
        yield "", _END, None


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


def _text_pieces(path: str, text_documents: str, separator: str,
                 resume_at: list | None = None) -> Iterator[tuple[str, bool, list | None]]:
    """``(piece, ends_document, resume point)`` for a text file; see ``document_pieces``."""
    begins, line_number, continued = resume_at or (0, 1, False)
    buffer: list[str] = []
    size, first = 0, None  # first: the resume point of the piece in the buffer
    for text, end, where in _text_segments(path, text_documents, separator, (begins, line_number)):
        if text:
            if size >= PIECE_CHARS and (_safe_cut(buffer[-1], text) or size >= _HARD_CUT_CHARS):
                yield "".join(buffer), False, first
                buffer, size, continued = [], 0, True
            if not buffer:
                first = None if where is None else [*where, continued]
            buffer.append(text)
            size += len(text)
        if end is not None:
            document = "".join(buffer)
            if end == _END_TRIM:
                document = document[:-2] if document.endswith("\r\n") else document.removesuffix("\n")
            if document or continued:
                yield document, True, first if buffer else None
            buffer, size, continued = [], 0, False


def _jsonl_records(path: str, resume_at: list | None = None) -> Iterator[tuple[Document, bool, list]]:
    """``(document, True, resume point)`` for each line of a JSON lines file; see ``document_pieces``."""
    start = (resume_at[0], resume_at[1]) if resume_at else (0, 1)
    for line_number, line, begins in _lines(path, start=start):
        if not line.strip():
            continue
        where = f"{path}:{line_number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: invalid JSON ({error.msg} at column {error.colno})") from None
        except RecursionError:
            raise ValueError(f"{where}: JSON nested too deeply to read") from None
        yield record_document(record, where), True, [begins, line_number, False]


def _jsonl_documents(path: str) -> Iterator[Document]:
    return (document for document, _, _ in _jsonl_records(path))


# A JSON array is read in chunks of this many bytes; one element may be this large, past which the file is taken to
# be broken (memory stays bounded)
JSON_CHUNK_BYTES = 2**20
_MAX_JSON_ELEMENT_CHARS = 256 * 2**20


def _json_documents(path: str) -> Iterator[Document]:
    """A ``.json`` file: an array of records, read element by element (``datasets``' json builder loads an array
    whole, and a minified one is a single line, so neither it nor a line reader bounds memory), or JSON lines."""
    with _open(path) as handle:  # the first character that is not white space says which
        while (start := _read(path, handle, 4096, whole_lines=False)) and not start.strip():
            pass
    if not start.lstrip().startswith(b"["):
        yield from _jsonl_documents(path)
        return
    decoder = json.JSONDecoder()
    chunks = _text_chunks(path)
    buffer, position, line, element = "", 0, 1, 0

    def more() -> bool:
        nonlocal buffer, position, line
        chunk = next(chunks, None)
        if chunk is None:
            return False
        line += buffer.count("\n", 0, position)
        buffer, position = buffer[position:] + chunk, 0
        return True

    def skip_space() -> str:
        nonlocal position
        while True:
            while position < len(buffer) and buffer[position] in " \t\r\n":
                position += 1
            if position < len(buffer) or not more():
                return buffer[position:position + 1]

    def fail(message: str, at: int):
        raise ValueError(f"{path}:{line + buffer.count(chr(10), 0, at)}: {message}")

    if skip_space() != "[":
        fail("expected a JSON array", position)
    position += 1
    while True:
        char = skip_space()
        if char == "]":
            position += 1
            if skip_space():
                fail("text after the end of the JSON array", position)
            return
        if element:
            if char != ",":
                fail("expected ',' or ']' between the array's elements", position)
            position += 1
            skip_space()
        while True:
            try:
                record, end = decoder.raw_decode(buffer, position)
                break
            except json.JSONDecodeError as error:
                if len(buffer) - position > _MAX_JSON_ELEMENT_CHARS or not more():
                    fail(f"invalid JSON ({error.msg})", error.pos)
            except RecursionError:
                fail("JSON nested too deeply to read", position)
        element += 1
        yield record_document(record, f"{path}: element {element}")
        position = end


def _text_chunks(path: str) -> Iterator[str]:
    """The file's text in pieces of about ``JSON_CHUNK_BYTES`` bytes (decoded incrementally; invalid UTF-8 is an
    error naming its byte)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    read = 0
    with _open(path) as handle:
        while True:
            raw = _read(path, handle, JSON_CHUNK_BYTES, whole_lines=False)
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as error:
                raise ValueError(f"{path}: not valid UTF-8 ({error.reason} at byte {read + error.start + 1}); "
                                 f"re-encode the file as UTF-8") from None
            read += len(raw)
            if text:
                yield text
            if not raw:
                return


def _csv_documents(path: str) -> Iterator[Document]:
    """A ``.csv`` file's ``text`` column, one document per row (the csv module, over our line reader: line numbers
    and UTF-8 errors as for every other input)."""
    csv.field_size_limit(2**31 - 1)  # a document may be longer than the module's default of 131,072 characters
    # strict: malformed quoting is an error, not a guess
    reader = csv.reader((line for _, line, _ in _lines(path)), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            return
        header[0] = header[0].removeprefix("\ufeff")  # the byte-order mark spreadsheet programs write
        if "text" not in header:
            raise ValueError(f"{path}: expected a 'text' column, found {', '.join(header) or 'none'}")
        column = header.index("text")
        for row in reader:
            if not row:
                continue  # a blank line
            if len(row) != len(header):
                raise ValueError(f"{path}:{reader.line_num}: {len(row)} fields, but the header names {len(header)}")
            yield row[column]
    except csv.Error as error:
        raise ValueError(f"{path}:{reader.line_num}: not valid CSV ({error})") from None


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
                yield check_messages(value, f"{path}: row {row}")


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


# the formats read record by record without resume points (.jsonl has them: ``_jsonl_records``)
_RECORD_READERS = {".json": _json_documents, ".csv": _csv_documents, ".parquet": _parquet_documents}


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
        yield from ((piece, ends) for piece, ends, _ in document_pieces(path, text_documents, document_separator))


def document_pieces(path: str, text_documents: str = "file", document_separator: str = DEFAULT_SEPARATOR,
                    resume_at: list | None = None) -> Iterator[tuple[Document, bool, list | None]]:
    """The pieces of one resolved input as ``iter_document_pieces`` yields them, each with a resume point: a small
    JSON-able list such that ``document_pieces(path, ..., resume_at=point)`` yields that piece first and then the
    rest, without reading what comes before it (a seek; compressed files are decompressed up to it). Pieces of
    ``.txt`` and ``.jsonl`` files that begin a line have one; other pieces (a later part of a long line, a document
    of the other formats) have None, and are reached by reading on from an earlier point."""
    kind = None if path == CHITCHAT or is_hub_input(path) else input_format(path)[0]
    if resume_at is not None and kind not in (".txt", ".jsonl"):
        raise ValueError(f"{path}: only .txt and .jsonl inputs are read from a resume point")
    if path == CHITCHAT:
        yield from ((conversation, True, None) for conversation in chitchat_conversations())
    elif is_hub_input(path):
        yield from ((document, True, None) for document in HubDataset.parse(path).documents())
    elif kind == ".jsonl":
        yield from _jsonl_records(path, resume_at)
    elif kind in _RECORD_READERS:
        yield from ((document, True, None) for document in _RECORD_READERS[kind](path))
    else:
        yield from _text_pieces(path, text_documents, document_separator, resume_at)


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
    """Path, size and modification time of each resolved input (a Hub dataset: its commit, and a size of None):
    what decides whether prepared data is stale."""
    described = []
    for path in files:
        if is_hub_input(path):
            described.append(HubDataset.parse(path).describe())
            continue
        real = _chitchat_file() if path == CHITCHAT else path
        stat = os.stat(real)
        described.append({"path": path if path == CHITCHAT else os.path.abspath(path), "size": stat.st_size,
                          "mtime": stat.st_mtime})
    return described


def dataset_validation_inputs(files: list[str]) -> list[str]:
    """The Hub datasets' own validation splits (``validation``, else ``test``) when every input is the ``train``
    split of a Hub dataset that has one; else nothing."""
    if not files or not all(is_hub_input(path) for path in files):
        return []
    splits = [HubDataset.parse(path).validation() for path in files]
    return [split.uri() for split in splits] if all(splits) else []


def iter_texts(documents: Iterable[Document]) -> Iterator[str]:
    """Plain strings of documents: a text as is, a conversation as the contents of its messages."""
    for document in documents:
        if isinstance(document, str):
            yield document
        else:
            yield from (message["content"] for message in document)


class TextSample:
    """The plain texts of a corpus (``iter_texts`` of its document pieces), at most ``max_bytes`` of UTF-8 of them,
    taken evenly over the whole of it: every input, and all of each, not its head. What a tokenizer trains on:
    the BPE trainer's memory grows with the distinct words it sees, so a bounded sample bounds it.

    A corpus that may hold more than ``max_bytes`` is read once first to count its text (a pass that only reads and
    decodes, far cheaper than training); then each piece is taken where the running share ``max_bytes / total`` of
    the bytes so far reaches it, so the sample follows the corpus evenly. ``max_bytes=None`` takes everything. After
    iterating, ``report()`` says what was taken."""

    def __init__(self, paths: list[str], text_documents: str = "file", document_separator: str = DEFAULT_SEPARATOR,
                 max_bytes: int | None = None):
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"the tokenizer's sample must be a positive number of bytes, got {max_bytes}")
        self.paths, self.text_documents, self.separator = list(paths), text_documents, document_separator
        self.max_bytes, self.taken = max_bytes, 0
        files = resolve_inputs(self.paths)
        on_disk = sum(entry["size"] or 0 for entry in describe_inputs(files))
        # text is never larger than an uncompressed file; a compressed one (or a Hub dataset) may hold any amount
        fits = max_bytes is None or (on_disk <= max_bytes and not any(
            is_hub_input(path) or (path != CHITCHAT and input_format(path)[1]) for path in files))
        self.total = None if fits else sum(len(text.encode("utf-8")) for text in self._texts())
        self.fraction = 1.0 if self.total is None or self.total <= max_bytes else max_bytes / self.total

    def _texts(self) -> Iterator[str]:
        return iter_texts(piece for piece, _ in iter_document_pieces(self.paths, self.text_documents, self.separator))

    def __iter__(self) -> Iterator[str]:
        self.taken, credit = 0, 0.0
        for text in self._texts():
            size = len(text.encode("utf-8"))
            if self.fraction < 1:
                credit += size * self.fraction
                if credit < size or self.taken + size > self.max_bytes:
                    continue
                credit -= size
            self.taken += size
            yield text

    def report(self) -> dict:
        """``{"max_bytes", "corpus_bytes", "sampled_bytes", "fraction"}`` (the corpus size is the sample's when the
        whole corpus was taken without counting it first)."""
        return {"max_bytes": self.max_bytes, "corpus_bytes": self.total if self.total is not None else self.taken,
                "sampled_bytes": self.taken, "fraction": round(self.fraction, 6)}

    def describe(self) -> str:
        """What was taken, in words, for the log."""
        if self.fraction >= 1:
            return f"all {self.taken:,} bytes of text"
        return (f"{self.taken / 1e6:,.1f} MB of {self.total / 1e6:,.1f} MB of text, taken evenly over every input "
                f"({self.taken / self.total:.1%}; tokenizer_train_bytes {self.max_bytes:,})")

    def save_report(self, folder: str | Path) -> None:
        """``report()`` as ``SAMPLE_REPORT`` in ``folder`` (the tokenizer's), with the inputs' paths."""
        record = {"inputs": self.paths, "text_documents": self.text_documents, **self.report()}
        (Path(folder) / SAMPLE_REPORT).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
