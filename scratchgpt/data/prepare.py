"""Raw text -> packed training blocks, stored as a memory-mapped Arrow ``DatasetDict`` on disk.

Steps: read documents (``sources``; a long text comes in pieces) -> clean (``cleaning``, optional) -> tokenize
(``tokenize_batch``, batched, ``num_proc`` workers; a document ends with ``<|endoftext|>``), shard by shard ->
split train/validation -> pack into blocks of ``block_size`` tokens (``pack_blocks``). Every intermediate lives in
Arrow files on disk, so memory stays bounded whatever the corpus size.

The first three steps work in shards of about ``shard_bytes`` of text (64 MB; a shard ends where its text reaches
that size, and may hold many small files or part of a large one). Each finished shard is kept in a hidden work
folder beside the output (``.<output>.partial``, see ``shards``), so a prepare killed at any point (a notebook's
disconnect, SIGKILL) continues on re-run after its last finished shard instead of starting again, seeking in a
``.txt`` or ``.jsonl`` input to where that shard ends (``document_pieces``' resume points); the result is the same,
token for token. The work folder is removed once the output is complete; ``rebuild`` discards it.

The validation split (``split_method`` in the metadata) is, in this order of precedence:

- ``validation_inputs``: the files given as validation data; nothing is split off the training inputs;
- ``dataset_split``: the Hub dataset's own ``validation`` (else ``test``) split, when every input is the ``train``
  split of a Hub dataset that has one (and ``val_fraction`` is not 0);
- ``none``: ``val_fraction`` is 0;
- ``document``: a seeded random ``val_fraction`` of the documents, when the corpus has at least
  ``MIN_DOCUMENTS_TO_SPLIT`` documents (so that one document is never a large share of either split);
- ``tail``: otherwise (one book, a few files) the last ``val_fraction`` of the token stream, in whole blocks, as
  nanoGPT does; the partial block between the two splits is dropped, so no token is in both.

Plain text is tokenized exactly as written: a literal ``<|endoftext|>`` or ``<|user|>`` inside a document is text,
not a special id. Special ids come only from the separator between documents and from the chat template's own
markers (``apply_chat_template(..., sanitize_control_tokens=True)`` where a message contains such a string).

The output folder holds the ``save_to_disk`` layout (``train/``, ``validation/``) and ``scratchgpt_data.json``
(counts, settings, split method, tokenizer fingerprint, sources with sizes and modification times, cleaning
report). It is built in a staging folder and moved into place when complete. Running again with the same inputs and
settings reuses it; any change to an input (validation inputs included), the tokenizer or a setting rebuilds it.
"""

import hashlib
import json
import logging
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import datasets
import torch
from datasets import Dataset, DatasetDict, Features, List, Value, load_from_disk
from datasets.arrow_writer import ArrowWriter
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from ..locking import exclusive_folder
from ..staging import staged_output
from ..tokenization import encode_chats
from .cleaning import clean_documents
from .shards import SHARD_BYTES, ShardFolder, work_folder
from .sources import (CHITCHAT, DEFAULT_SEPARATOR, check_text_options, dataset_validation_inputs, describe_inputs,
                      document_pieces, input_format, iter_document_pieces, resolve_inputs)


__all__ = [
    "METADATA_FILE",
    "MIN_DOCUMENTS_TO_SPLIT",
    "opening_words",
    "prepare_dataset",
    "load_prepared",
    "read_metadata",
    "token_dtype",
    "tokenizer_fingerprint",
    "tokenize_batch",
    "encode_documents",
    "pack_blocks",
    "collate_blocks",
]

logger = logging.getLogger(__name__)

METADATA_FILE = "scratchgpt_data.json"
# 2: .txt verbatim by default, documents in pieces, literal special-token strings, tail and explicit validation
FORMAT_VERSION = 2
MIN_DOCUMENTS_TO_SPLIT = 10
DOCUMENT_FEATURES = Features({
    "text": Value("string"),
    "messages": List({"role": Value("string"), "content": Value("string")}),
    "document": Value("int64"),  # index of the document this record belongs to
    "piece": Value("int32"),  # index of this record within its document (0 for a document in one piece)
    "ends_document": Value("bool"),  # the document's last piece: <|endoftext|> follows it
})


def token_dtype(vocab_size: int) -> str:
    """The narrowest storage for token ids: uint16 when every id fits (vocabulary <= 65,536), else int32."""
    return "uint16" if vocab_size <= 2**16 else "int32"


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of everything that decides the ids a tokenizer produces for our documents."""
    parts = [tokenizer.backend_tokenizer.to_str(), str(tokenizer.chat_template), str(tokenizer.eos_token_id)]
    return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()


def _document_records(files: list[str], text_documents: str, document_separator: str, start: list):
    """``(record, position after it)`` for every record of ``files`` from ``start``. A position is ``[file index,
    records read of that file, document index, piece index, resume]`` of the next record, where resume is the last
    resume point of that file's records before it (``document_pieces``) with the record's number, or None: what a
    shard's manifest entry keeps, so a resumed job skips the files already done unread, seeks in the next to the
    last point before the records done and reads past those after it (usually none, or one)."""
    first_file, skip, document, piece, *resume = start  # a position of four: written before resume points
    resume = resume[0] if resume else None
    for index in range(first_file, len(files)):
        point, n = (resume[:-1], resume[-1]) if index == first_file and resume else (None, 0)
        last_point = resume if point else None
        pieces = document_pieces(files[index], text_documents, document_separator, resume_at=point)
        for n, (content, ends_document, here) in enumerate(pieces, start=n):
            if here is not None:
                last_point = [*here, n]
            if index == first_file and n < skip:
                continue
            text, messages = (content, None) if isinstance(content, str) else (None, content)
            record = {"text": text, "messages": messages, "document": document, "piece": piece,
                      "ends_document": ends_document}
            document, piece = (document + 1, 0) if ends_document else (document, piece + 1)
            yield record, [index, n + 1, document, piece, last_point]


def _record_bytes(record: dict) -> int:
    if record["text"] is not None:
        return len(record["text"].encode("utf-8"))
    return sum(len(message["content"].encode("utf-8")) for message in record["messages"])


def _encode_literally(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Token ids of plain texts in which special-token strings are ordinary text (``split_special_tokens``)."""
    backend = tokenizer.backend_tokenizer
    before = backend.encode_special_tokens
    backend.encode_special_tokens = True
    try:
        # encode_batch_fast skips offsets and masks: same ids, ~30% faster than tokenizer(texts)
        return [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=False)]
    finally:
        backend.encode_special_tokens = before


def tokenize_batch(batch: dict, tokenizer: PreTrainedTokenizerBase, assistant_only_loss: bool = False) -> dict:
    """Token ids of each record (plain text literally, conversations through the chat template), followed by one
    ``<|endoftext|>`` where the record ends its document. With ``assistant_only_loss`` (conversations only) also
    ``assistant_masks``: True for the tokens that are trained (assistant content and its ``<|end|>``)."""
    ids: list[list[int] | None] = [None] * len(batch["text"])
    plain = [i for i, messages in enumerate(batch["messages"]) if messages is None]
    chats = [i for i, messages in enumerate(batch["messages"]) if messages is not None]
    if assistant_only_loss and plain:
        raise ValueError("assistant_only_loss needs conversations (records with 'messages'), but the inputs hold "
                         f"plain text, e.g. {batch['text'][plain[0]][:60]!r}")
    for i, encoded in zip(plain, _encode_literally(tokenizer, [batch["text"][i] for i in plain])):
        ids[i] = encoded
    masks = [None] * len(ids)
    if chats:
        conversations = [batch["messages"][i] for i in chats]
        if assistant_only_loss:
            encoded, chat_masks = encode_chats(tokenizer, conversations, return_assistant_masks=True)
            for i, mask in zip(chats, chat_masks):
                masks[i] = [bool(m) for m in mask]
        else:
            encoded = encode_chats(tokenizer, conversations)
        for i, chat_ids in zip(chats, encoded):
            ids[i] = chat_ids
    ends = batch.get("ends_document") or [True] * len(ids)
    eos = tokenizer.eos_token_id
    out = {"input_ids": [encoded + [eos] if end else encoded for encoded, end in zip(ids, ends)]}
    if assistant_only_loss:  # <|endoftext|> after a conversation is not trained
        out["assistant_masks"] = [mask + [False] if end else mask for mask, end in zip(masks, ends)]
    return out


def encode_documents(tokenizer: PreTrainedTokenizerBase, documents) -> list[int]:
    """The token stream ``prepare_dataset`` builds from ``documents`` (strings or conversations), in memory: each
    document's ids followed by ``<|endoftext|>``. What ``scratchgpt evaluate`` scores."""
    stream: list[int] = []
    batch = {"text": [], "messages": []}
    for document in documents:
        batch["text"].append(document if isinstance(document, str) else None)
        batch["messages"].append(None if isinstance(document, str) else document)
        if len(batch["text"]) == 1000:
            stream += [i for ids in tokenize_batch(batch, tokenizer)["input_ids"] for i in ids]
            batch = {"text": [], "messages": []}
    if batch["text"]:
        stream += [i for ids in tokenize_batch(batch, tokenizer)["input_ids"] for i in ids]
    return stream


def pack_blocks(token_dataset: Dataset, block_size: int, start: int = 0, stop: int | None = None,
                keep: np.ndarray | None = None) -> Iterator[pa.Table]:
    """Yield Arrow tables of consecutive ``block_size`` slices of the concatenated token stream between token
    positions ``start`` and ``stop`` (default: its end), as fixed-size list columns; only a final partial block is
    dropped. Reads the memory-mapped tokens batch by batch (bounded memory) and cuts each batch with numpy, one
    table per batch rather than one Python object per block. ``keep`` (one bool per record) leaves out the records
    where it is False (the other split's documents) before the stream is formed. An ``assistant_masks`` column is
    cut the same way, and then a block without any assistant token is left out."""
    columns = [name for name in ("input_ids", "assistant_masks") if name in token_dataset.column_names]
    carry, position, first_record = None, 0, 0  # position: stream index of flat[0]
    for table in token_dataset.select_columns(columns).with_format("arrow").iter(batch_size=4096):
        if keep is not None:
            n_records = len(table)
            table = table.filter(pa.array(keep[first_record: first_record + n_records]))
            first_record += n_records
        arrays = [pc.list_flatten(table.column(name)).to_numpy(zero_copy_only=False) for name in columns]
        flat = np.stack(arrays) if len(arrays) > 1 else arrays[0][None]  # (columns, tokens); masks become 0/1
        if carry is not None:
            flat = np.concatenate([carry, flat], axis=1)
        if position < start:
            skipped = min(start - position, flat.shape[1])
            flat, position = flat[:, skipped:], position + skipped
        if stop is not None:
            flat = flat[:, : max(0, stop - position)]
        n_blocks = flat.shape[1] // block_size
        blocks = flat[:, : n_blocks * block_size].reshape(len(columns), n_blocks, block_size)
        if len(columns) > 1:
            # no assistant token: nothing to learn, and a batch of such blocks has a loss of 0/0
            blocks = blocks[:, blocks[1].any(axis=1)]
        if blocks.shape[1]:
            yield pa.table({name: pa.FixedSizeListArray.from_arrays(
                                pa.array(blocks[c].ravel() if name == "input_ids" else blocks[c].ravel() != 0),
                                block_size)
                            for c, name in enumerate(columns)})
        carry, position = flat[:, n_blocks * block_size:], position + n_blocks * block_size
        if stop is not None and position + block_size > stop:
            return


def _column(dataset: Dataset, name: str) -> np.ndarray:
    """One column as numpy, through the dataset's indices mapping (``dataset.data`` would ignore a ``select``). As
    one Arrow slice: ``dataset[name]`` is a lazy column that numpy would read row by row (~100x slower)."""
    return dataset.select_columns([name]).with_format("arrow")[:][name].to_numpy(zero_copy_only=False)


def _validation_documents(documents: Dataset, val_fraction: float, seed: int) -> np.ndarray | None:
    """The document indices held out for validation, or None when the corpus is too small to split by document."""
    ids = np.unique(_column(documents, "document"))
    n_validation = round(len(ids) * val_fraction)
    if len(ids) < MIN_DOCUMENTS_TO_SPLIT or n_validation == 0:
        return None
    return np.random.default_rng(seed).choice(ids, size=n_validation, replace=False)


def _selected(values: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
    return values if keep is None else values[keep]


def _n_tokens(token_ids: Dataset, keep: np.ndarray | None = None) -> int:
    lengths = pc.list_value_length(token_ids.data.column("input_ids")).to_numpy(zero_copy_only=False)
    return int(_selected(lengths, keep).sum())


def _any_assistant_token(token_ids: Dataset, keep: np.ndarray | None) -> bool:
    masks = token_ids.data.column("assistant_masks")
    return bool(pc.any(pc.list_flatten(masks if keep is None else pc.filter(masks, pa.array(keep)))).as_py())


def _n_conversations(records: Dataset) -> int:
    """How many records are conversations (``messages`` set) rather than plain text, read as Arrow batches."""
    nulls = sum(batch.column(0).null_count
                for batch in records.select_columns(["messages"]).with_format("arrow").iter(batch_size=100_000))
    return len(records) - nulls


def opening_words(blocks: Dataset, tokenizer: PreTrainedTokenizerBase, n_prompts: int = 3, n_words: int = 5,
                  scan_blocks: int = 64) -> list[str]:
    """Up to ``n_prompts`` prompts for sample generations on plain text: the first ``n_words`` words (as written)
    of the first documents of ``blocks``, where the stream starts and after each end-of-text token."""
    eos = tokenizer.eos_token_id
    stream = np.concatenate([np.asarray(blocks[i]["input_ids"]) for i in range(min(scan_blocks, len(blocks)))])
    starts = [0] + [int(i) + 1 for i in np.flatnonzero(stream == eos)]
    prompts = []
    for start in starts:
        window = 16 * n_words  # enough tokens for the words, even at one token per character
        ids = stream[start: start + window].tolist()
        ids = ids[: ids.index(eos)] if eos in ids else ids
        text = tokenizer.decode(ids, skip_special_tokens=True).lstrip()
        words = list(re.finditer(r"\S+", text))
        if len(ids) == window and len(words) <= n_words:
            words = words[:-1]  # the window may end inside the last word
        words = words[:n_words]
        prompt = text[: words[-1].end()] if words else ""
        if prompt and prompt not in prompts:
            prompts.append(prompt)
        if len(prompts) == n_prompts:
            break
    return prompts


def _n_documents(records: Dataset, keep: np.ndarray | None = None) -> int:
    return int(_selected(_column(records, "ends_document"), keep).sum())


def read_metadata(path: str | Path) -> dict | None:
    """The ``scratchgpt_data.json`` of a prepared folder, or None if there is none (or it is unreadable)."""
    try:
        return json.loads((Path(path) / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def load_prepared(path: str | Path) -> DatasetDict:
    """Open a prepared folder (memory-mapped); examples come out as numpy arrays of ``block_size`` ids in the
    stored dtype (uint16 or int32; ``collate_blocks`` widens them to int64 per batch)."""
    metadata = read_metadata(path)
    if metadata is None:
        raise FileNotFoundError(f"{path}: not a prepared dataset (no readable {METADATA_FILE})")
    try:
        return load_from_disk(str(path)).with_format("numpy", dtype=np.dtype(metadata["dtype"]))
    except Exception as error:  # a truncated or garbled Arrow file: pyarrow's and datasets' own error types
        raise ValueError(f"{path}: the prepared data is unreadable ({str(error).splitlines()[0][:200]}); delete the "
                         f"folder (or prepare with --rebuild) to build it again") from None


def _check_conversations(files: list[str], text_documents: str, document_separator: str) -> None:
    """``assistant_only_loss`` needs conversations: name the first input whose first document is plain text."""
    for file in files:
        for content, _ in iter_document_pieces([file], text_documents, document_separator):
            if isinstance(content, str):
                raise ValueError(f"{file}: plain text, but assistant_only_loss needs conversations (records with "
                                 f"'messages'); set assistant_only_loss false to train on every token")
            break


@contextmanager
def _no_bar():
    """datasets' progress bar off for one step whose bar would repeat once per shard (cleaning, tokenizing: the
    shard bar covers them) or say nothing (saving)."""
    was_off = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_off:
            datasets.enable_progress_bars()


def _expected_shards(files: list[str], shard_bytes: int) -> int:
    """How many shards ``files`` will make, from their sizes on disk: text is as large as an uncompressed file and
    taken to be about four times a compressed one (a guess, for the progress bar's total and ETA only)."""
    sizes = [(entry["size"] or 0) * (4 if path != CHITCHAT and input_format(path)[1] else 1)
             for path, entry in zip(files, describe_inputs(files))]
    return max(1, -(-sum(sizes) // shard_bytes))


def _tokenized_shards(work: ShardFolder, split: str, files: list[str], tokenizer: PreTrainedTokenizerBase,
                      text_documents: str, document_separator: str, clean: str, num_proc: int | None,
                      assistant_only_loss: bool, token_features: dict, shard_bytes: int) -> Dataset | None:
    """Read, clean and tokenize ``files`` shard by shard into ``work`` (continuing after the shards it has), and
    return all of ``split``'s tokenized records as one dataset (None if there are none): ``input_ids`` (and
    ``assistant_masks``) with each record's ``document`` and ``ends_document``, in the order read."""
    entries = work.entries(split)
    seen = None  # exact-duplicate detection spans the whole corpus, so it carries over from the finished shards
    if clean != "off":
        seen = set()
        done = work.dataset(split)
        for chunk in (done.data.column("digest").chunks if done is not None else []):
            seen.update(chunk.to_pylist())
    if entries and not work.complete(split):
        logger.info("prepare: continuing %s after its %d finished shards", split, len(entries))
    features = Features({**token_features, "document": Value("int64"), "ends_document": Value("bool"),
                         **({"digest": Value("binary")} if seen is not None else {})})
    stream = _document_records(files, text_documents, document_separator, entries[-1]["next"] if entries else
                               [0, 0, 0, 0, None])
    expected = max(_expected_shards(files, shard_bytes), len(entries) + (not work.complete(split)))
    with tqdm(total=expected, initial=len(entries), unit="shard",
              desc="Tokenizing inputs" if split == "train" else "Tokenizing validation inputs",
              disable=work.complete(split) or datasets.are_progress_bars_disabled()) as progress:
        while not work.complete(split):
            scratch = work.scratch()
            size, position = 0, None
            with ArrowWriter(features=DOCUMENT_FEATURES, path=str(scratch / "documents.arrow")) as writer:
                for record, position in stream:  # the same stream, shard after shard
                    writer.write(record)
                    size += _record_bytes(record)
                    if size >= shard_bytes:
                        break
                writer.finalize()
            if position is None:
                work.finish(split)
                break
            with _no_bar():
                documents = Dataset.from_file(str(scratch / "documents.arrow"))
                documents, cleaning = clean_documents(documents, clean, num_proc, seen)
                tokens = documents.map(
                    tokenize_batch, batched=True, num_proc=num_proc,
                    fn_kwargs={"tokenizer": tokenizer, "assistant_only_loss": assistant_only_loss},
                    remove_columns=["text", "messages", "piece"], features=features)
                ends = size < shard_bytes  # the stream ran out inside this shard
                work.add(split, tokens, {"next": position, "bytes": size, "records": len(documents),
                                         "conversations": _n_conversations(documents), "cleaning": cleaning},
                         complete=ends)
            progress.total = max(progress.total, progress.n + 1 + (not ends))
            progress.update(1)
        progress.total = progress.n
    return work.dataset(split)


def _cleaning_report(entries: list[dict], clean: str) -> dict:
    """The shards' cleaning reports summed into one."""
    report = {"mode": clean}
    if clean == "off":
        return report
    for entry in entries:
        for name, value in entry["cleaning"].items():
            if name != "mode":
                report[name] = report.get(name, 0) + value
    return report


def _split(train: Dataset, validation: Dataset | None, val_fraction: float, seed: int):
    """(split method, {split name: (token records, which of them belong to the split, or None for all)}); see the
    module docstring for the order of the methods. The ``tail`` method returns the training records only: its split
    is made on the token stream (``_tail_spans``)."""
    if validation is not None:
        return "validation_inputs", {"train": (train, None), "validation": (validation, None)}
    if val_fraction == 0:
        return "none", {"train": (train, None)}
    held_out = _validation_documents(train, val_fraction, seed)
    if held_out is None:
        return "tail", {"train": (train, None)}
    mask = np.isin(_column(train, "document"), held_out)
    return "document", {"train": (train, ~mask), "validation": (train, mask)}


def _tail_spans(token_ids: Dataset, n_tokens: int, n_documents: int, block_size: int, val_fraction: float):
    """The training head and validation tail of one token stream, in whole blocks: the last ``val_fraction`` of its
    blocks (at least one) for validation, and the partial block between them dropped."""
    n_validation = max(1, round(n_tokens // block_size * val_fraction))
    validation_start = n_tokens - n_validation * block_size
    if validation_start < block_size:
        raise ValueError(f"the corpus has {n_tokens:,} tokens, too few for a training and a validation block of "
                         f"block_size {block_size}: give more text, a smaller block size or a val_fraction of 0")
    return [("train", token_ids, None, 0, validation_start, n_documents),
            ("validation", token_ids, None, validation_start, n_tokens, 0)]


def _pack_splits(spans: list[tuple], block_size: int, dtype: str, assistant_only_loss: bool,
                 cache: Path) -> tuple[dict[str, Dataset], dict[str, dict]]:
    """The blocks of each split (Arrow files in ``cache``) and its counts for the metadata."""
    block_features = {"input_ids": List(Value(dtype), length=block_size)}
    if assistant_only_loss:
        block_features["assistant_masks"] = List(Value("bool"), length=block_size)
    splits, counts = {}, {}
    for name, token_ids, keep, start, stop, n_documents in spans:
        n_blocks = (stop - start) // block_size
        if n_blocks == 0:
            raise ValueError(f"the {name} split has {stop - start:,} tokens, fewer than one block of block_size "
                             f"{block_size}: give more text, a smaller block size or a different val fraction")
        if assistant_only_loss and not _any_assistant_token(token_ids, keep):
            raise ValueError(f"no block of the {name} split holds an assistant token: check that the conversations "
                             f"have assistant turns")
        path = str(cache / f"{name}.arrow")
        with ArrowWriter(features=Features(block_features), path=path) as writer:
            for table in pack_blocks(token_ids, block_size, start, stop, keep):
                writer.write_table(table)
            writer.finalize()
        splits[name] = Dataset.from_file(path)
        counts[name] = {"documents": n_documents, "tokens": stop - start, "blocks": n_blocks,
                        "tokens_dropped": stop - start - n_blocks * block_size}
        if assistant_only_loss:
            kept = len(splits[name])
            trained = pc.sum(pc.list_flatten(splits[name].data.column("assistant_masks"))).as_py() or 0
            counts[name].update(blocks=kept, blocks_without_assistant_tokens=n_blocks - kept, trained_tokens=trained)
            logger.info("%s: %s of %s tokens in blocks are trained (assistant turns), %s masked; %s blocks without "
                        "an assistant token left out", name, f"{trained:,}", f"{kept * block_size:,}",
                        f"{kept * block_size - trained:,}", f"{n_blocks - kept:,}")
    return splits, counts


def prepare_dataset(
    tokenizer: PreTrainedTokenizerBase,
    inputs: list[str],
    output: str | Path,
    block_size: int,
    val_fraction: float = 0.1,
    clean: str = "off",
    num_proc: int | None = None,
    seed: int = 0,
    text_documents: str = "file",
    document_separator: str = DEFAULT_SEPARATOR,
    validation_inputs: list[str] | None = None,
    rebuild: bool = False,
    assistant_only_loss: bool = False,
    shard_bytes: int = SHARD_BYTES,
) -> DatasetDict:
    """Build (or reuse) the packed dataset for ``inputs`` in ``output``; returns it loaded with ``load_prepared``.

    ``validation_inputs`` (files in any input format) become the validation split; otherwise ``val_fraction`` of the
    inputs is held out (see the module docstring for how). Raises ``ValueError``/``FileNotFoundError`` naming the
    problem for bad inputs or settings, including a corpus too small for one block per split; in that case nothing
    is written at ``output``.

    ``assistant_only_loss`` (conversation data only) stores an ``assistant_masks`` column beside ``input_ids``:
    True for the tokens to train (assistant content and its ``<|end|>``); ``collate_blocks`` makes every other
    label -100. The metadata counts the trained tokens of each split.
    """
    if block_size < 2:
        raise ValueError(f"block_size must be at least 2, got {block_size}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no end-of-text (eos) token to separate documents")
    check_text_options(text_documents, document_separator)
    files = resolve_inputs(inputs)
    validation_files = resolve_inputs(validation_inputs) if validation_inputs else []
    from_dataset = False
    if not validation_files and val_fraction > 0:
        validation_files = dataset_validation_inputs(files)
        from_dataset = bool(validation_files)
    if assistant_only_loss:
        _check_conversations(files + validation_files, text_documents, document_separator)
    dtype = token_dtype(len(tokenizer))
    identity = {
        "format_version": FORMAT_VERSION,
        "settings": {"block_size": block_size, "val_fraction": val_fraction, "clean": clean, "seed": seed,
                     "text_documents": text_documents, "document_separator": document_separator,
                     "assistant_only_loss": assistant_only_loss},
        "tokenizer": {"fingerprint": tokenizer_fingerprint(tokenizer), "vocab_size": len(tokenizer),
                      "eos_token_id": tokenizer.eos_token_id},
        "dtype": dtype,
        "sources": describe_inputs(files),
        "validation_sources": describe_inputs(validation_files),
    }
    fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()
    # one writer at a time; the lock sits beside the folder, which is replaced as a whole when complete
    with exclusive_folder(output, inside=False, what="prepare"):
        existing = read_metadata(output)
        if existing is not None and existing.get("fingerprint") == fingerprint and not rebuild:
            logger.info("%s is up to date; reusing it", output)
            return load_prepared(output)
        if existing is not None:
            logger.info("%s is stale (inputs, tokenizer or settings changed); rebuilding it", output)

        if rebuild:
            shutil.rmtree(work_folder(output), ignore_errors=True)
        work = ShardFolder(work_folder(output), fingerprint)
        token_features = {"input_ids": List(Value(dtype))}
        if assistant_only_loss:
            token_features["assistant_masks"] = List(Value("bool"))
        logger.info("prepare: reading %s in shards of %s MB of text (finished shards are kept in %s)",
                    ", ".join(inputs), f"{shard_bytes / 2**20:g}", work.folder)
        common = {"tokenizer": tokenizer, "text_documents": text_documents, "document_separator": document_separator,
                  "num_proc": num_proc, "assistant_only_loss": assistant_only_loss,
                  "token_features": token_features, "shard_bytes": shard_bytes}
        try:
            train = _tokenized_shards(work, "train", files, clean=clean, **common)
            if train is None:
                raise ValueError(f"no documents in {', '.join(inputs)}")
            validation = None
            if validation_files:
                validation = _tokenized_shards(work, "validation", validation_files, clean="off", **common)
                if validation is None:
                    raise ValueError(f"no documents in {', '.join(validation_files)}")
            method, parts = _split(train, validation, val_fraction, seed)
            method = "dataset_split" if from_dataset else method
            # (split name, token records, which of them, first token, last token + 1, documents) of each split
            spans = [(name, token_ids, keep, 0, _n_tokens(token_ids, keep), _n_documents(token_ids, keep))
                     for name, (token_ids, keep) in parts.items()]
            if method == "tail":
                spans = _tail_spans(train, spans[0][4], spans[0][5], block_size, val_fraction)
            with staged_output(output, overwrite=existing is not None) as staging:
                (staging / "cache").mkdir()
                splits, counts = _pack_splits(spans, block_size, dtype, assistant_only_loss, staging / "cache")
                with _no_bar():
                    DatasetDict(splits).save_to_disk(str(staging))
                shutil.rmtree(staging / "cache")
                metadata = {**identity, "fingerprint": fingerprint, "split_method": method, "splits": counts,
                            "cleaning": _cleaning_report(work.entries("train"), clean),
                            "conversations": sum(entry["conversations"] for entry in work.entries("train")),
                            "shards": {name: len(work.entries(name)) for name in parts if work.entries(name)}}
                (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
        except ValueError:  # bad input or settings: nothing worth keeping (a fixed input is a new job anyway)
            work.remove()
            raise
        except BaseException:  # a full disk, Ctrl-C: the finished shards are what the next run starts from
            work.tidy()
            finished = sum(1 for split in ("train", "validation") for entry in work.entries(split) if entry["name"])
            if finished:
                logger.warning("prepare: stopped; %d finished shards are kept in %s, and the same command run again "
                               "continues from them", finished, work.folder)
            raise
        work.remove()
    return load_prepared(output)


def collate_blocks(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Batch collator: stored uint16/int32 ids -> int64 ``input_ids`` and ``labels`` (the model shifts labels);
    where the blocks carry ``assistant_masks``, labels outside them are -100 (not trained)."""
    input_ids = torch.from_numpy(np.stack([np.asarray(e["input_ids"]) for e in examples]).astype(np.int64))
    labels = input_ids.clone()
    if "assistant_masks" in examples[0]:
        masks = torch.from_numpy(np.stack([np.asarray(e["assistant_masks"]) for e in examples]).astype(bool))
        labels[~masks] = -100
    return {"input_ids": input_ids, "labels": labels}
