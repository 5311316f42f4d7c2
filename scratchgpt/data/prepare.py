"""Raw text -> packed training blocks, stored as a memory-mapped Arrow ``DatasetDict`` on disk.

Steps, each a function over a ``datasets.Dataset``: read documents (``sources``; a long text comes in pieces) ->
clean (``cleaning``, optional) -> split train/validation -> tokenize (``tokenize_batch``, batched, ``num_proc``
workers; a document ends with ``<|endoftext|>``) -> pack into blocks of ``block_size`` tokens (``pack_blocks``).
Every intermediate lives in Arrow files on disk, so memory stays bounded whatever the corpus size.

The validation split (``split_method`` in the metadata) is, in this order of precedence:

- ``validation_inputs``: the files given as validation data; nothing is split off the training inputs;
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
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import torch
from datasets import Dataset, DatasetDict, Features, List, Value, load_from_disk
from datasets.exceptions import DatasetGenerationError
from transformers import PreTrainedTokenizerBase

from ..locking import exclusive_folder
from ..staging import staged_output
from ..tokenization import encode_chats
from .cleaning import clean_documents
from .sources import DEFAULT_SEPARATOR, check_text_options, describe_inputs, iter_document_pieces, resolve_inputs


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


def _document_records(inputs: list[str], text_documents: str, document_separator: str):
    document, piece = 0, 0
    for content, ends_document in iter_document_pieces(inputs, text_documents, document_separator):
        text, messages = (content, None) if isinstance(content, str) else (None, content)
        yield {"text": text, "messages": messages, "document": document, "piece": piece, "ends_document": ends_document}
        document, piece = (document + 1, 0) if ends_document else (document, piece + 1)


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


def pack_blocks(token_dataset: Dataset, block_size: int, start: int = 0, stop: int | None = None):
    """Yield ``{"input_ids": block}`` for consecutive ``block_size`` slices of the concatenated token stream between
    token positions ``start`` and ``stop`` (default: its end); only a final partial block is dropped. Reads the
    memory-mapped tokens batch by batch (bounded memory). An ``assistant_masks`` column is cut the same way, and
    then a block without any assistant token is left out."""
    columns = [name for name in ("input_ids", "assistant_masks") if name in token_dataset.column_names]
    carry, position = None, 0  # position: stream index of flat[0]
    for table in token_dataset.with_format("arrow").iter(batch_size=4096):
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
        for i in range(n_blocks):
            if len(columns) > 1 and not blocks[1, i].any():
                continue  # no assistant token: nothing to learn, and a batch of such blocks has a loss of 0/0
            yield {name: blocks[c, i] if name == "input_ids" else blocks[c, i].astype(bool)
                   for c, name in enumerate(columns)}
        carry, position = flat[:, n_blocks * block_size:], position + n_blocks * block_size
        if stop is not None and position + block_size > stop:
            return


def _column(dataset: Dataset, name: str) -> np.ndarray:
    """One column as numpy, through the dataset's indices mapping (``dataset.data`` would ignore a ``select``)."""
    return np.asarray(dataset.with_format("numpy")[name])


def _validation_documents(documents: Dataset, val_fraction: float, seed: int) -> np.ndarray | None:
    """The document indices held out for validation, or None when the corpus is too small to split by document."""
    ids = np.unique(_column(documents, "document"))
    n_validation = round(len(ids) * val_fraction)
    if len(ids) < MIN_DOCUMENTS_TO_SPLIT or n_validation == 0:
        return None
    return np.random.default_rng(seed).choice(ids, size=n_validation, replace=False)


def _n_tokens(token_ids: Dataset) -> int:
    return int(pc.sum(pc.list_value_length(token_ids.data.column("input_ids"))).as_py() or 0)


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


def _n_documents(records: Dataset) -> int:
    return int(_column(records, "ends_document").sum())


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
    """datasets' progress bar off for one step whose bar would mislead (``from_generator`` calls every table it
    writes "Generating train split", the validation blocks too) or say nothing (saving); the long steps, cleaning
    and tokenizing, keep theirs, named by their ``desc``."""
    import datasets

    was_off = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_off:
            datasets.enable_progress_bars()


def _read_documents(files: list[str], text_documents: str, document_separator: str, cache: str,
                    fingerprint: str) -> Dataset:
    try:
        with _no_bar():
            return Dataset.from_generator(
                _document_records, features=DOCUMENT_FEATURES, cache_dir=cache, fingerprint=fingerprint,
                gen_kwargs={"inputs": files, "text_documents": text_documents,
                            "document_separator": document_separator})
    except DatasetGenerationError as error:
        # datasets wraps whatever the reader raised; a bad-input error is the user's one-line message
        if isinstance(error.__cause__, (ValueError, OSError)):
            raise error.__cause__ from None
        raise


def _split(documents: Dataset, validation_files: list[str], val_fraction: float, seed: int, text_documents: str,
           document_separator: str, cache: str, fingerprint: str) -> tuple[str, dict[str, Dataset]]:
    """(split method, {split name: records}); see the module docstring for the order of the methods. The ``tail``
    method returns the training records only: its split is made on the token stream (``_tail_spans``)."""
    if validation_files:
        validation = _read_documents(validation_files, text_documents, document_separator, cache,
                                     f"{fingerprint[:32]}-validation-documents")
        if len(validation) == 0:
            raise ValueError(f"no documents in {', '.join(validation_files)}")
        return "validation_inputs", {"train": documents, "validation": validation}
    if val_fraction == 0:
        return "none", {"train": documents}
    held_out = _validation_documents(documents, val_fraction, seed)
    if held_out is None:
        return "tail", {"train": documents}
    mask = np.isin(_column(documents, "document"), held_out)
    return "document", {"train": documents.select(np.flatnonzero(~mask)),
                        "validation": documents.select(np.flatnonzero(mask))}


def _tail_spans(token_ids: Dataset, n_tokens: int, n_documents: int, block_size: int, val_fraction: float):
    """The training head and validation tail of one token stream, in whole blocks: the last ``val_fraction`` of its
    blocks (at least one) for validation, and the partial block between them dropped."""
    n_validation = max(1, round(n_tokens // block_size * val_fraction))
    validation_start = n_tokens - n_validation * block_size
    if validation_start < block_size:
        raise ValueError(f"the corpus has {n_tokens:,} tokens, too few for a training and a validation block of "
                         f"block_size {block_size}: give more text, a smaller block size or a val_fraction of 0")
    return [("train", token_ids, 0, validation_start, n_documents),
            ("validation", token_ids, validation_start, n_tokens, 0)]


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

        with staged_output(output, overwrite=existing is not None) as staging:
            cache = str(staging / "cache")
            logger.info("prepare: reading %s", ", ".join(inputs))
            documents = _read_documents(files, text_documents, document_separator, cache, fingerprint[:32])
            if len(documents) == 0:
                raise ValueError(f"no documents in {', '.join(inputs)}")
            documents, cleaning = clean_documents(documents, clean, num_proc)
            conversations = _n_conversations(documents)
            method, parts = _split(documents, validation_files, val_fraction, seed, text_documents,
                                   document_separator, cache, fingerprint)
            token_features = {"input_ids": List(Value(dtype))}
            block_features = {"input_ids": List(Value(dtype), length=block_size)}
            if assistant_only_loss:
                token_features["assistant_masks"] = List(Value("bool"))
                block_features["assistant_masks"] = List(Value("bool"), length=block_size)
            tokenized = {name: part.map(
                tokenize_batch, batched=True, num_proc=num_proc,
                fn_kwargs={"tokenizer": tokenizer, "assistant_only_loss": assistant_only_loss},
                remove_columns=part.column_names, features=Features(token_features),
                desc=f"Tokenizing {name}") for name, part in parts.items()}
            # (split name, token dataset, first token, last token + 1, documents) of each split
            spans = [(name, token_ids, 0, _n_tokens(token_ids), _n_documents(parts[name]))
                     for name, token_ids in tokenized.items()]
            if method == "tail":
                spans = _tail_spans(tokenized["train"], spans[0][3], spans[0][4], block_size, val_fraction)
            splits, counts = {}, {}
            for name, token_ids, start, stop, n_documents in spans:
                n_blocks = (stop - start) // block_size
                if n_blocks == 0:
                    raise ValueError(f"the {name} split has {stop - start:,} tokens, fewer than one block of "
                                     f"block_size {block_size}: give more text, a smaller block size or a different "
                                     f"val fraction")
                masks = token_ids.data.column("assistant_masks") if assistant_only_loss else None
                if masks is not None and not pc.any(pc.list_flatten(masks)).as_py():
                    raise ValueError(f"no block of the {name} split holds an assistant token: check that the "
                                     f"conversations have assistant turns")
                with _no_bar():
                    splits[name] = Dataset.from_generator(
                        pack_blocks, features=Features(block_features),
                        cache_dir=cache, fingerprint=f"{fingerprint[:32]}-{name}",
                        gen_kwargs={"token_dataset": token_ids, "block_size": block_size, "start": start,
                                    "stop": stop})
                counts[name] = {"documents": n_documents, "tokens": stop - start, "blocks": n_blocks,
                                "tokens_dropped": stop - start - n_blocks * block_size}
                if assistant_only_loss:
                    kept = len(splits[name])
                    trained = pc.sum(pc.list_flatten(splits[name].data.column("assistant_masks"))).as_py() or 0
                    counts[name].update(blocks=kept, blocks_without_assistant_tokens=n_blocks - kept,
                                        trained_tokens=trained)
                    logger.info("%s: %s of %s tokens in blocks are trained (assistant turns), %s masked; %s blocks "
                                "without an assistant token left out", name, f"{trained:,}", f"{kept * block_size:,}",
                                f"{kept * block_size - trained:,}", f"{n_blocks - kept:,}")
            with _no_bar():
                DatasetDict(splits).save_to_disk(str(staging))
            shutil.rmtree(cache)
            metadata = {**identity, "fingerprint": fingerprint, "split_method": method, "splits": counts,
                        "cleaning": cleaning, "conversations": conversations}
            (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
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
