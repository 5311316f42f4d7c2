import copy
import hashlib
import json
import os
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchgpt.data import prepare as prepare_module
from scratchgpt.data.prepare import (
    METADATA_FILE,
    collate_blocks,
    load_prepared,
    prepare_dataset,
    read_metadata,
    token_dtype,
)
from scratchgpt.tokenization import SPECIAL_TOKENS, train_bpe_tokenizer, train_char_tokenizer

from .testing_utils import SAMPLE_TEXT


@lru_cache(maxsize=1)
def tokenizer():
    return train_bpe_tokenizer([SAMPLE_TEXT], vocab_size=300, show_progress=False)


def documents(n=40):
    # every document distinct, so each can be recognised in the packed stream
    return [f"document {i}: " + " ".join(["the quick brown fox"] * (1 + i % 7)) for i in range(n)]


def prepare_paragraphs(*args, **kwargs):
    """``prepare_dataset`` with .txt files split at blank lines, as ``write_text`` writes its documents."""
    return prepare_dataset(*args, **{"text_documents": "paragraph", **kwargs})


def listing(folder):
    """The names in ``folder``, but for the (empty, harmless) lock files ``prepare`` leaves beside its output."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def write_text(path, docs):
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return str(path)


def stream(dataset):
    return np.concatenate([row["input_ids"] for row in dataset]) if len(dataset) else np.array([], dtype=np.int64)


def segments(ids, eos):
    """Split a packed stream at eos: the complete documents it holds (the first and last may be partial)."""
    cuts = np.flatnonzero(ids == eos)
    return [tuple(part) for part in np.split(ids, cuts + 1)]


# --- packing ---------------------------------------------------------------------------------------------------------


def test_packing_is_exact_without_validation(tmp_path):
    docs = documents()
    result = prepare_paragraphs(tokenizer(), [write_text(tmp_path / "a.txt", docs)], tmp_path / "out", block_size=16,
                             val_fraction=0)
    eos = tokenizer().eos_token_id
    expected = np.concatenate([tokenizer()(d, add_special_tokens=False).input_ids + [eos] for d in docs])
    packed = stream(result["train"])
    n_blocks = len(expected) // 16
    assert len(result["train"]) == n_blocks and list(result) == ["train"]
    assert np.array_equal(packed, expected[: n_blocks * 16])  # every token, in order, one eos between documents
    counts = read_metadata(tmp_path / "out")["splits"]["train"]
    assert counts == {"documents": 40, "tokens": len(expected), "blocks": n_blocks,
                      "tokens_dropped": len(expected) - n_blocks * 16}


def test_split_is_by_document_with_no_leakage(tmp_path):
    docs = documents(50)
    result = prepare_paragraphs(tokenizer(), [write_text(tmp_path / "a.txt", docs)], tmp_path / "out", block_size=8,
                             val_fraction=0.2, seed=3)
    eos = tokenizer().eos_token_id
    encoded = {tuple(tokenizer()(d, add_special_tokens=False).input_ids + [eos]): d for d in docs}
    seen = {}
    for split in ("train", "validation"):
        parts = segments(stream(result[split]), eos)
        complete = [p for p in parts[:-1] if p in encoded]  # the final part may be cut by the dropped tail
        assert len(complete) >= len(parts) - 2, split
        seen[split] = [encoded[p] for p in complete]
        assert len(set(seen[split])) == len(seen[split]), f"a document repeats in {split}"
    assert not set(seen["train"]) & set(seen["validation"])
    metadata = read_metadata(tmp_path / "out")["splits"]
    assert (metadata["train"]["documents"], metadata["validation"]["documents"]) == (40, 10)
    assert len(set(seen["train"]) | set(seen["validation"])) >= 48  # at most one tail document per split is cut


def test_conversations_use_the_chat_template(tmp_path):
    chat_tokenizer = train_bpe_tokenizer([SAMPLE_TEXT], vocab_size=300, show_progress=False)
    record = {"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi there"}]}
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(record) + "\n" + json.dumps({"text": "plain words"}) + "\n")
    result = prepare_paragraphs(chat_tokenizer, [str(path)], tmp_path / "out", block_size=4, val_fraction=0)
    text = chat_tokenizer.decode(stream(result["train"]))
    rendered = "<|user|>\nhello<|end|>\n<|assistant|>\nhi there<|end|>\n<|endoftext|>plain words<|endoftext|>"
    assert rendered.startswith(text) and len(text) >= len(rendered) - 20


def test_every_source_format(tmp_path):
    (tmp_path / "docs").mkdir()
    write_text(tmp_path / "docs" / "a.txt", ["text file document"])
    (tmp_path / "docs" / "b.jsonl").write_text(json.dumps({"text": "jsonl text document"}) + "\n")
    pq.write_table(pa.table({"text": ["parquet document one", "parquet document two"]}),
                   tmp_path / "docs" / "c.parquet")
    pq.write_table(pa.table({"messages": [[{"role": "user", "content": "parquet chat"}]]}), tmp_path / "d.parquet")
    result = prepare_paragraphs(tokenizer(), [str(tmp_path / "docs"), str(tmp_path / "*.parquet")], tmp_path / "out",
                             block_size=4, val_fraction=0)
    text = tokenizer().decode(stream(result["train"]), skip_special_tokens=False)
    for piece in ["text file document", "jsonl text document", "parquet document one", "parquet document two",
                  "<|user|>\nparquet chat<|end|>"]:
        assert piece in text
    assert read_metadata(tmp_path / "out")["splits"]["train"]["documents"] == 5


def test_chitchat_source(tmp_path):
    result = prepare_paragraphs(tokenizer(), ["chitchat"], tmp_path / "out", block_size=512, val_fraction=0.1,
                             num_proc=2)
    metadata = read_metadata(tmp_path / "out")
    assert metadata["splits"]["train"]["documents"] + metadata["splits"]["validation"]["documents"] == 7168
    assert metadata["sources"][0]["path"] == "chitchat" and metadata["sources"][0]["size"] > 10_000_000
    assert len(result["train"]) == metadata["splits"]["train"]["blocks"]


# --- storage ---------------------------------------------------------------------------------------------------------


def test_token_dtype_choice():
    assert token_dtype(300) == token_dtype(65536) == "uint16"
    assert token_dtype(65537) == "int32"


def test_large_vocabulary_is_stored_as_int32(tmp_path):
    # 70,000 distinct characters (skipping surrogates) -> ids above 65,535
    alphabet = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 70_000) if not 0xD800 <= c <= 0xDFFF)
    big = train_char_tokenizer([alphabet])
    assert len(big) > 65536
    text = alphabet[-50:] * 3
    result = prepare_paragraphs(big, [write_text(tmp_path / "a.txt", [text])], tmp_path / "out", block_size=32,
                             val_fraction=0)
    assert result["train"].features["input_ids"].feature.dtype == "int32"
    assert result["train"][0]["input_ids"].dtype == np.int32
    assert np.array_equal(stream(result["train"]), big(text).input_ids[: len(result["train"]) * 32])


def test_small_vocabulary_is_stored_as_uint16_and_collated_as_int64(tmp_path):
    result = prepare_paragraphs(tokenizer(), [write_text(tmp_path / "a.txt", documents())], tmp_path / "out",
                             block_size=16, val_fraction=0)
    assert result["train"].data.schema.field("input_ids").type.value_type == pa.uint16()
    rows = [result["train"][i] for i in range(3)]
    assert rows[0]["input_ids"].dtype == np.uint16
    batch = collate_blocks(rows)
    assert batch["input_ids"].dtype == torch.int64 and batch["input_ids"].shape == (3, 16)
    assert torch.equal(batch["labels"], batch["input_ids"])


# --- reuse, rebuild, atomic writes -----------------------------------------------------------------------------------


def test_unchanged_inputs_are_reused(tmp_path, monkeypatch):
    path = write_text(tmp_path / "a.txt", documents())
    prepare_paragraphs(tokenizer(), [path], tmp_path / "out", block_size=16, val_fraction=0)

    def must_not_run(*args, **kwargs):
        raise AssertionError("rebuilt although nothing changed")

    monkeypatch.setattr(prepare_module.Dataset, "from_generator", must_not_run)
    assert len(prepare_paragraphs(tokenizer(), [path], tmp_path / "out", block_size=16, val_fraction=0)["train"]) > 0


@pytest.mark.parametrize("change", ["input", "tokenizer", "block_size", "clean", "chat_template"])
def test_changes_rebuild(tmp_path, change):
    if change == "chat_template":
        path = str(tmp_path / "a.jsonl")
        chats = [{"messages": [{"role": "user", "content": d}, {"role": "assistant", "content": "ok"}]}
                 for d in documents()]
        Path(path).write_text("".join(json.dumps(chat) + "\n" for chat in chats))
    else:
        path = write_text(tmp_path / "a.txt", documents())
    prepare_paragraphs(tokenizer(), [path], tmp_path / "out", block_size=16, val_fraction=0)
    before = read_metadata(tmp_path / "out")
    kwargs = {"block_size": 16, "val_fraction": 0}
    used_tokenizer = tokenizer()
    if change == "input":
        write_text(tmp_path / "a.txt", documents(60))
        os.utime(path, (before["sources"][0]["mtime"] + 10,) * 2)
    elif change == "tokenizer":
        used_tokenizer = train_char_tokenizer([SAMPLE_TEXT, *documents()])
    elif change == "block_size":
        kwargs["block_size"] = 8
    elif change == "chat_template":  # the same tokenizer with only its template changed
        used_tokenizer = copy.deepcopy(tokenizer())
        used_tokenizer.chat_template = used_tokenizer.chat_template.replace("{{ '\n' }}", "{{ '\n\n' }}")
        assert used_tokenizer.chat_template != tokenizer().chat_template
    else:
        kwargs["clean"] = "lenient"
    prepare_paragraphs(used_tokenizer, [path], tmp_path / "out", **kwargs)
    after = read_metadata(tmp_path / "out")
    assert after["fingerprint"] != before["fingerprint"]
    assert after["splits"] != before["splits"] or change == "clean"
    assert listing(tmp_path) == [Path(path).name, "out"]  # no staging or retired folders


def test_interrupted_run_keeps_only_its_finished_shards_and_the_old_output(tmp_path, monkeypatch):
    path = write_text(tmp_path / "a.txt", documents())
    original = prepare_module.pack_blocks

    def interrupted(*args, **kwargs):
        yield next(original(*args, **kwargs))
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of packing

    monkeypatch.setattr(prepare_module, "pack_blocks", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_paragraphs(tokenizer(), [path], tmp_path / "out", block_size=16, val_fraction=0)
    assert listing(tmp_path) == [".out.partial", "a.txt"]  # the tokenized shards, for the next run; no output

    monkeypatch.setattr(prepare_module, "pack_blocks", original)
    good = prepare_paragraphs(tokenizer(), [path], tmp_path / "out", block_size=16, val_fraction=0)
    assert listing(tmp_path) == ["a.txt", "out"]
    n_blocks = len(good["train"])
    monkeypatch.setattr(prepare_module, "pack_blocks", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_paragraphs(tokenizer(), [path], tmp_path / "out", block_size=8, val_fraction=0)
    assert len(load_prepared(tmp_path / "out")["train"]) == n_blocks  # the previous complete output survives
    assert listing(tmp_path) == [".out.partial", "a.txt", "out"]


def test_an_unrelated_folder_is_never_overwritten(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="already exists and is not empty"):
        prepare_paragraphs(tokenizer(), [write_text(tmp_path / "a.txt", documents())], tmp_path / "out", block_size=16)
    assert (tmp_path / "out" / "precious.txt").read_text() == "keep me"


# --- bad input ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.txt", None, "missing.txt: no such file or folder"),
        ("empty.txt", b"", "empty.txt: file is empty"),
        ("bad.txt", b"fine\n\xc3\x28\n", "bad.txt:2: not valid UTF-8"),
        ("bad.jsonl", b'{"text": "a"}\n{"text": "b"\n', "bad.jsonl:2: invalid JSON"),
        ("role.jsonl", b'{"messages": [{"role": "narrator", "content": "x"}]}\n', "role.jsonl:1: unknown role"),
        ("small.txt", b"just a few words\n", r"the train split has \d+ tokens, fewer than one block of block_size 64"),
    ],
)
def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path, name, content, message):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        prepare_paragraphs(tokenizer(), [str(tmp_path / name)], tmp_path / "out", block_size=64, val_fraction=0)
    assert not (tmp_path / "out").exists()
    assert not [name for name in listing(tmp_path) if name.startswith(".")]


def test_too_little_text_for_a_validation_split(tmp_path):
    with pytest.raises(ValueError, match=r"the corpus has \d+ tokens, too few for a training and a validation block "
                                         "of block_size 8"):
        prepare_dataset(tokenizer(), [write_text(tmp_path / "a.txt", ["one document"])], tmp_path / "out",
                        block_size=8, val_fraction=0.1)
    assert not (tmp_path / "out").exists()


def test_load_prepared_refuses_other_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"not a prepared dataset \\(no readable {METADATA_FILE}\\)"):
        load_prepared(tmp_path)


# --- text fidelity and the validation split ---------------------------------------------------------------------------

NOVEL = "".join(f"Chapter {i}.\n\n  \"Hello,\" she said; he nodded.\n\tIndented line {i}.\n\n\n" for i in range(60)) + \
    "The End.\n"


def test_default_txt_is_learned_verbatim_with_a_tail_validation_split(tmp_path):
    char = train_char_tokenizer([NOVEL])
    path = tmp_path / "novel.txt"
    path.write_text(NOVEL, encoding="utf-8")
    result = prepare_dataset(char, [str(path)], tmp_path / "out", block_size=32)
    metadata = read_metadata(tmp_path / "out")
    assert metadata["split_method"] == "tail" and metadata["settings"]["text_documents"] == "file"
    train_ids, validation_ids = stream(result["train"]), stream(result["validation"])
    train_text = char.decode(train_ids)
    n_stream = len(NOVEL) + 1  # one document: the file as written (one id per character), then <|endoftext|>
    # the training blocks are the text from its first byte ("\n\n" and all), up to the dropped partial block ...
    assert NOVEL.startswith(train_text) and "\n\n\n" in train_text
    counts = metadata["splits"]
    assert len(train_ids) == counts["train"]["blocks"] * 32 and counts["train"]["tokens_dropped"] < 32
    # ... the validation blocks are its tail, and no position is in both
    assert validation_ids[-1] == char.eos_token_id and NOVEL.endswith(char.decode(validation_ids[:-1]))
    assert len(validation_ids) == counts["validation"]["blocks"] * 32 == round(n_stream // 32 * 0.1) * 32
    assert len(train_ids) + counts["train"]["tokens_dropped"] + len(validation_ids) == n_stream


def test_many_documents_split_by_document(tmp_path):
    docs = documents(30)
    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    prepare_dataset(tokenizer(), [str(path)], tmp_path / "out", block_size=8, val_fraction=0.2)
    metadata = read_metadata(tmp_path / "out")
    assert metadata["split_method"] == "document"
    assert (metadata["splits"]["train"]["documents"], metadata["splits"]["validation"]["documents"]) == (24, 6)
    # from exactly MIN_DOCUMENTS_TO_SPLIT documents by document; below it, the tail of the stream instead
    for n_documents, method in ((prepare_module.MIN_DOCUMENTS_TO_SPLIT, "document"),
                                (prepare_module.MIN_DOCUMENTS_TO_SPLIT - 1, "tail")):
        path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[:n_documents]))
        prepare_dataset(tokenizer(), [str(path)], tmp_path / f"out{n_documents}", block_size=8, val_fraction=0.2)
        assert read_metadata(tmp_path / f"out{n_documents}")["split_method"] == method, n_documents


@settings(max_examples=60, deadline=None)
@given(n_documents=st.integers(1, 60), val_fraction=st.floats(0, 0.5), seed=st.integers(0, 2**32 - 1))
def test_a_document_split_holds_out_whole_documents_only_when_there_are_enough(n_documents, val_fraction, seed):
    """The rule of the document split: from MIN_DOCUMENTS_TO_SPLIT documents on (and a non-empty share), exactly
    round(n * val_fraction) distinct documents are held out, the same for the same seed; otherwise none (the tail)."""
    from datasets import Dataset

    # records of documents 0..n-1, each in one to three pieces
    pieces = [document for document in range(n_documents) for _ in range(1 + document % 3)]
    held_out = prepare_module._validation_documents(Dataset.from_dict({"document": pieces}), val_fraction, seed)
    expected = round(n_documents * val_fraction)
    if n_documents < prepare_module.MIN_DOCUMENTS_TO_SPLIT or expected == 0:
        assert held_out is None
    else:
        assert len(set(held_out.tolist())) == len(held_out) == expected and set(held_out.tolist()) <= set(pieces)
        again = prepare_module._validation_documents(Dataset.from_dict({"document": pieces}), val_fraction, seed)
        assert np.array_equal(held_out, again)


def test_plain_text_samples_start_from_its_own_first_words(tmp_path):
    """Conversations are counted in the metadata (a model trained on them chats); plain text gets prompts from the
    opening words of its first documents, whole words as written."""
    from scratchgpt.data.prepare import opening_words

    docs = ["Once upon a time,\tthere was a fox.", "It was a bright cold day in April.", "Short.", "Call me Ishmael."]
    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs * 3))
    result = prepare_dataset(tokenizer(), [str(path)], tmp_path / "out", block_size=8, val_fraction=0)
    assert read_metadata(tmp_path / "out")["conversations"] == 0
    assert opening_words(result["train"], tokenizer()) == ["Once upon a time,\tthere", "It was a bright cold",
                                                           "Short."]
    chats = tmp_path / "c.jsonl"
    chats.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": "hello"}]}) + "\n" +
                     json.dumps({"text": "and one plain text"}) + "\n")
    prepare_dataset(tokenizer(), [str(chats)], tmp_path / "chat", block_size=4, val_fraction=0)
    assert read_metadata(tmp_path / "chat")["conversations"] == 1


def test_separator_and_paragraph_modes(tmp_path):
    eos = tokenizer().eos_token_id
    path = tmp_path / "a.txt"
    path.write_text("first doc\n\nstill first\n<|endoftext|>\nsecond doc\n")
    result = prepare_dataset(tokenizer(), [str(path)], tmp_path / "sep", block_size=2, val_fraction=0,
                             text_documents="separator")
    expected = [*tokenizer()("first doc\n\nstill first").input_ids, eos, *tokenizer()("second doc\n").input_ids, eos]
    n = len(expected) // 2 * 2
    assert stream(result["train"]).tolist() == expected[:n]
    result = prepare_dataset(tokenizer(), [str(path)], tmp_path / "par", block_size=2, val_fraction=0,
                             text_documents="paragraph")
    expected = [*tokenizer()("first doc").input_ids, eos,
                *tokenizer()("still first\n<|endoftext|>\nsecond doc", split_special_tokens=True).input_ids, eos]
    assert stream(result["train"]).tolist() == expected[: len(expected) // 2 * 2]
    assert read_metadata(tmp_path / "par")["splits"]["train"]["documents"] == 2


def test_special_token_strings_in_text_stay_text(tmp_path):
    eos = tokenizer().eos_token_id
    text = "a web page quoting <|endoftext|> and <|user|> and <|end|> as text"
    chat = [{"role": "user", "content": "what does <|end|> mean?"}, {"role": "assistant", "content": "<|endoftext|>"}]
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"text": text}) + "\n" + json.dumps({"messages": chat}) + "\n")
    with path.open("a") as f:
        f.write(json.dumps({"text": "a last document to fill the final block"}) + "\n")
    result = prepare_dataset(tokenizer(), [str(path)], tmp_path / "out", block_size=2, val_fraction=0)
    ids = stream(result["train"]).tolist()
    specials = {tokenizer().convert_tokens_to_ids(t): t for t in SPECIAL_TOKENS}
    special_positions = [(i, specials[t]) for i, t in enumerate(ids) if t in specials][:6]
    text_length = len(tokenizer()(text, split_special_tokens=True).input_ids)
    # the text's literal strings are no special ids; the chat keeps its template's markers as special ids only
    assert [t for _, t in special_positions] == ["<|endoftext|>", "<|user|>", "<|end|>", "<|assistant|>", "<|end|>",
                                                 "<|endoftext|>"]
    assert special_positions[0] == (text_length, "<|endoftext|>") and ids[text_length] == eos
    assert tokenizer().decode(ids[: text_length]) == text
    rendered = tokenizer().decode(ids[text_length + 1:], skip_special_tokens=False)
    assert rendered.startswith(tokenizer().apply_chat_template(chat, tokenize=False) + "<|endoftext|>")


def test_validation_inputs_are_the_validation_split(tmp_path):
    train_path = write_text(tmp_path / "train.txt", documents(20))
    valid_txt = tmp_path / "valid.txt"
    valid_txt.write_text("held out text, exactly as written.\n\nSecond paragraph.\n")
    valid_jsonl = tmp_path / "valid.jsonl"
    valid_jsonl.write_text(json.dumps({"text": "a jsonl validation document"}) + "\n")
    result = prepare_dataset(tokenizer(), [train_path], tmp_path / "out", block_size=2,
                             validation_inputs=[str(valid_txt), str(valid_jsonl)])
    eos = tokenizer().eos_token_id
    expected = [*tokenizer()(valid_txt.read_text()).input_ids, eos,
                *tokenizer()("a jsonl validation document").input_ids, eos]
    assert stream(result["validation"]).tolist() == expected[: len(expected) // 2 * 2]
    metadata = read_metadata(tmp_path / "out")
    assert metadata["split_method"] == "validation_inputs"
    assert metadata["splits"]["train"]["documents"] == 1  # the whole training file, nothing split off it
    n_train = len(tokenizer()(Path(train_path).read_text()).input_ids) + 1
    assert len(stream(result["train"])) == n_train // 2 * 2
    # a changed validation file rebuilds the data
    valid_txt.write_text("different held out text\n")
    os.utime(valid_txt, (metadata["validation_sources"][0]["mtime"] + 10,) * 2)
    result = prepare_dataset(tokenizer(), [train_path], tmp_path / "out", block_size=2,
                             validation_inputs=[str(valid_txt), str(valid_jsonl)])
    assert read_metadata(tmp_path / "out")["fingerprint"] != metadata["fingerprint"]
    assert tokenizer().decode(stream(result["validation"])).startswith("different held out text\n")


def test_data_prepared_by_an_older_format_is_rebuilt(tmp_path):
    path = write_text(tmp_path / "a.txt", documents())
    prepare_dataset(tokenizer(), [path], tmp_path / "out", block_size=16, val_fraction=0)
    metadata_path = tmp_path / "out" / METADATA_FILE
    old = json.loads(metadata_path.read_text())
    # what format 1 wrote for the same input: no separator setting, paragraphs by default
    identity = {key: old[key] for key in ("tokenizer", "dtype", "sources")}
    identity.update(format_version=1, settings={**old["settings"], "text_documents": "paragraph"})
    del identity["settings"]["document_separator"]
    old.update(identity, fingerprint=hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest())
    metadata_path.write_text(json.dumps(old))
    prepare_dataset(tokenizer(), [path], tmp_path / "out", block_size=16, val_fraction=0)
    assert read_metadata(tmp_path / "out")["format_version"] == 2


@pytest.mark.parametrize("n_tokens", [64, 65, 79])
def test_pack_blocks_keeps_every_full_block(n_tokens):
    from datasets import Dataset

    def blocks(**window):
        tables = prepare_module.pack_blocks(tokens, 16, **window)
        return [block for table in tables for block in table.column("input_ids").to_pylist()]

    tokens = Dataset.from_dict({"input_ids": [list(range(n_tokens))]})
    assert len(blocks()) == n_tokens // 16  # an exact multiple keeps its last block
    assert np.array_equal(np.concatenate(blocks()), np.arange(n_tokens // 16 * 16))
    assert np.array_equal(np.concatenate(blocks(start=3, stop=3 + 32)), np.arange(3, 35))


# --- assistant-only loss ----------------------------------------------------------------------------------------------


def write_chats(path, n=12):
    chats = [[{"role": "system", "content": f"system {i}"}, {"role": "user", "content": f"user says {i}"},
              {"role": "assistant", "content": f"reply {i}"}, {"role": "user", "content": "more"},
              {"role": "assistant", "content": f"second reply {i}"}] for i in range(n)]
    path.write_text("".join(json.dumps({"messages": chat}) + "\n" for chat in chats), encoding="utf-8")
    return str(path), chats


@pytest.mark.parametrize("val_fraction", [0.0, 0.25])  # none (one stream) and document split
def test_assistant_masks_stay_aligned_through_packing(tmp_path, val_fraction):
    path, chats = write_chats(tmp_path / "chats.jsonl")
    tok = tokenizer()
    dataset = prepare_dataset(tok, [path], tmp_path / "out", block_size=16, val_fraction=val_fraction,
                              assistant_only_loss=True)
    metadata = read_metadata(tmp_path / "out")
    assert metadata["settings"]["assistant_only_loss"] is True
    for name, split in dataset.items():
        ids = stream(split)
        masks = np.concatenate([row["assistant_masks"] for row in split]).astype(bool)
        assert metadata["splits"][name]["trained_tokens"] == masks.sum()
        # what the mask keeps is exactly the assistant replies, each closed by <|end|>, in order
        replies = tok.decode(ids[masks].tolist()).split("<|end|>")
        assert len(replies) > 4 and all(re.fullmatch(r"(second )?reply \d+", r) for r in replies[1:-1])
        assert (np.diff(masks.astype(int)) != 0).sum() >= 2 * (len(replies) - 2)  # separate runs, not one span
        batch = collate_blocks([split[i] for i in range(min(4, len(split)))])
        labels, inputs = batch["labels"], batch["input_ids"]
        flat_masks = masks[: labels.numel()].reshape(labels.shape)
        assert torch.equal(labels[torch.from_numpy(flat_masks)], inputs[torch.from_numpy(flat_masks)])
        assert (labels[~torch.from_numpy(flat_masks)] == -100).all()


def test_assistant_masks_of_a_known_conversation(tmp_path):
    """Exactly the assistant tokens and their <|end|> carry labels: the labels' non-masked ids are the ids of the
    assistant contents plus <|end|>, and nothing else (no role marker, no user text, no <|endoftext|>)."""
    tok = tokenizer()
    chat = [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "general kenobi"},
            {"role": "user", "content": "you are a bold one"}, {"role": "assistant", "content": "kill him"}]
    (tmp_path / "c.jsonl").write_text(json.dumps({"messages": chat}) + "\n", encoding="utf-8")
    ids = tok.apply_chat_template(chat, return_dict=False) + [tok.eos_token_id]
    dataset = prepare_dataset(tok, [str(tmp_path / "c.jsonl")], tmp_path / "out", block_size=len(ids),
                              val_fraction=0, assistant_only_loss=True)
    labels = collate_blocks([dataset["train"][0]])["labels"][0].tolist()
    end = tok.convert_tokens_to_ids("<|end|>")
    expected = [*tok("general kenobi", add_special_tokens=False).input_ids, end,
                *tok("kill him", add_special_tokens=False).input_ids, end]
    assert [label for label in labels if label != -100] == expected
    assert labels[-1] == -100 and labels[0] == -100  # <|endoftext|> and <|user|>


def test_assistant_only_loss_on_plain_text_is_an_error(tmp_path):
    path = write_text(tmp_path / "a.txt", documents())
    chats, _ = write_chats(tmp_path / "chats.jsonl")
    with pytest.raises(ValueError, match=r"a\.txt: plain text, but assistant_only_loss needs conversations"):
        prepare_dataset(tokenizer(), [chats, path], tmp_path / "out", block_size=16, assistant_only_loss=True)
    assert listing(tmp_path) == ["a.txt", "chats.jsonl"]


def test_blocks_without_an_assistant_token_are_left_out(tmp_path):
    """A batch of such blocks would have no target at all (a loss of 0/0): long user turns fill whole blocks."""
    tok = tokenizer()
    chats = [[{"role": "user", "content": "the quick brown fox " * 20}, {"role": "assistant", "content": "ok"}]
             for _ in range(6)]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"messages": c}) + "\n" for c in chats))
    dataset = prepare_dataset(tok, [str(tmp_path / "c.jsonl")], tmp_path / "out", block_size=8, val_fraction=0,
                              assistant_only_loss=True)
    counts = read_metadata(tmp_path / "out")["splits"]["train"]
    n_tokens = sum(len(tok.apply_chat_template(c, return_dict=False)) + 1 for c in chats)
    assert counts["tokens"] == n_tokens
    assert counts["blocks"] + counts["blocks_without_assistant_tokens"] == n_tokens // 8
    assert counts["blocks_without_assistant_tokens"] > counts["blocks"] > 0
    assert len(dataset["train"]) == counts["blocks"]
    assert all(np.asarray(row["assistant_masks"]).any() for row in dataset["train"])
    user_only = [{"role": "user", "content": "hello there " * 5}]  # no assistant turn at all
    (tmp_path / "u.jsonl").write_text(json.dumps({"messages": user_only}) + "\n")
    with pytest.raises(ValueError, match="no block of the train split holds an assistant token"):
        prepare_dataset(tok, [str(tmp_path / "u.jsonl")], tmp_path / "out2", block_size=4, val_fraction=0,
                        assistant_only_loss=True)
    assert not (tmp_path / "out2").exists()


# --- shards: resuming after a kill -----------------------------------------------------------------------------------


def prepared_content(folder):
    """Everything a prepared folder holds that training sees: each split's blocks and the metadata, but for the
    number of shards it was built in."""
    dataset = load_prepared(folder)
    metadata = {k: v for k, v in read_metadata(folder).items() if k != "shards"}
    return metadata, {name: [row[column].tolist() for row in dataset[name] for column in sorted(row)]
                      for name in dataset}


def corpus_cases(tmp_path):
    """(inputs, settings) of corpora that cross shard boundaries in every way: many small documents (split by
    document), duplicates in different shards (cleaning), one long text in pieces (split at its tail), separate
    validation files, and conversations with assistant-only loss."""
    docs = documents(60)
    many = write_text(tmp_path / "many.txt", docs + docs[:10])  # the repeats land in later shards
    long = tmp_path / "long.txt"
    long.write_text(SAMPLE_TEXT * 40, encoding="utf-8")
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps({"messages": [{"role": "user", "content": d},
                                                      {"role": "assistant", "content": d[::-1]}]}) + "\n"
                             for d in docs), encoding="utf-8")
    return {
        "documents": ([many], {"text_documents": "paragraph"}),
        "cleaned": ([many], {"text_documents": "paragraph", "clean": "balanced"}),
        "tail": ([str(long)], {}),
        "validation files": ([many, str(long)], {"text_documents": "paragraph", "validation_inputs": [many]}),
        "assistant only": ([str(chats)], {"assistant_only_loss": True}),
    }


@pytest.mark.parametrize("case", ["documents", "cleaned", "tail", "validation files", "assistant only"])
def test_many_small_shards_give_the_same_dataset_as_one(tmp_path, case):
    inputs, settings = corpus_cases(tmp_path)[case]
    whole = prepare_dataset(tokenizer(), inputs, tmp_path / "whole", block_size=16, **settings)
    prepare_dataset(tokenizer(), inputs, tmp_path / "sharded", block_size=16, shard_bytes=500, **settings)
    shards = read_metadata(tmp_path / "sharded")["shards"]
    assert read_metadata(tmp_path / "whole")["shards"]["train"] == 1 and shards["train"] >= 5, shards
    assert prepared_content(tmp_path / "sharded") == prepared_content(tmp_path / "whole")
    assert len(whole["train"]) > 0
    if case == "cleaned":  # a repeat is known as one although its first copy is in an earlier shard
        assert read_metadata(tmp_path / "sharded")["cleaning"]["duplicates_removed"] == 10
    assert not (tmp_path / ".sharded.partial").exists()


@pytest.mark.parametrize("case", ["documents", "cleaned", "tail", "validation files", "assistant only",
                                  "compressed", "long lines"])
def test_a_prepare_stopped_between_shards_continues_to_the_same_dataset(tmp_path, monkeypatch, case):
    import gzip

    from scratchgpt.data import shards, sources

    cases = corpus_cases(tmp_path)
    cases["compressed"] = ([str(tmp_path / "many.txt.gz")], {"text_documents": "paragraph"})
    Path(cases["compressed"][0][0]).write_bytes(gzip.compress(Path(cases["documents"][0][0]).read_bytes()))
    lines = tmp_path / "lines.txt"  # lines of ~700 characters, in parts of ~40 that no resume point starts at
    lines.write_text("".join(f"{i} {SAMPLE_TEXT.replace(chr(10), ' ')[:700]}\n" for i in range(40)), encoding="utf-8")
    cases["long lines"] = ([str(lines)], {})
    if case == "long lines":
        monkeypatch.setattr(sources, "PIECE_CHARS", 40)
    inputs, settings = cases[case]
    prepare_dataset(tokenizer(), inputs, tmp_path / "whole", block_size=16, **settings)

    add, added = shards.ShardFolder.add, []

    def stopped_after_three(self, *args, **kwargs):
        add(self, *args, **kwargs)
        added.append(1)
        if len(added) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(shards.ShardFolder, "add", stopped_after_three)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(tokenizer(), inputs, tmp_path / "out", block_size=16, shard_bytes=500, **settings)
    monkeypatch.setattr(shards.ShardFolder, "add", add)
    pieces, resumed_at = prepare_module.document_pieces, []

    def spied(path, *args, resume_at=None):
        resumed_at.append(resume_at)
        return pieces(path, *args, resume_at=resume_at)

    monkeypatch.setattr(prepare_module, "document_pieces", spied)
    prepare_dataset(tokenizer(), inputs, tmp_path / "out", block_size=16, shard_bytes=500, **settings)
    # sought into the file, not read again from its start; but for one line without a line break (the tail case)
    assert resumed_at[0] is not None and (resumed_at[0][0] > 0) == (case != "tail"), resumed_at[0]
    assert prepared_content(tmp_path / "out") == prepared_content(tmp_path / "whole")


PREPARE_UNTIL_KILLED = """
import sys, time
from transformers import AutoTokenizer
from scratchgpt.data import prepare
original = prepare.tokenize_batch
def slow(*args, **kwargs):  # tokenizing takes long enough for the parent to kill the process in the middle
    time.sleep(0.05)
    return original(*args, **kwargs)
prepare.tokenize_batch = slow
prepare.prepare_dataset(AutoTokenizer.from_pretrained(sys.argv[1]), [sys.argv[2]], sys.argv[3], block_size=16,
                        text_documents="paragraph", shard_bytes=400)
"""


def test_a_killed_prepare_continues_from_its_last_finished_shard(tmp_path, caplog):
    import signal
    import subprocess
    import sys
    import time

    path = write_text(tmp_path / "a.txt", documents(300))
    tokenizer().save_pretrained(tmp_path / "tok")
    process = subprocess.Popen([sys.executable, "-c", PREPARE_UNTIL_KILLED, str(tmp_path / "tok"), path,
                                str(tmp_path / "out")], stderr=subprocess.DEVNULL)
    manifest = tmp_path / ".out.partial" / "manifest.json"
    deadline = time.monotonic() + 120
    finished = 0
    while finished < 3 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
        try:
            finished = len(json.loads(manifest.read_text())["splits"]["train"]["shards"])
        except (OSError, ValueError, KeyError):
            pass
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert finished >= 3 and not (tmp_path / "out").exists()
    kept = len(json.loads(manifest.read_text())["splits"]["train"]["shards"])
    assert kept < 50  # killed in the middle: most shards were still to do

    with caplog.at_level("INFO", logger="scratchgpt.data.prepare"):
        prepare_dataset(tokenizer(), [path], tmp_path / "out", block_size=16, text_documents="paragraph",
                        shard_bytes=400)
    assert f"continuing train after its {kept} finished shards" in caplog.text
    prepare_dataset(tokenizer(), [path], tmp_path / "whole", block_size=16, text_documents="paragraph")
    assert prepared_content(tmp_path / "out") == prepared_content(tmp_path / "whole")
    assert listing(tmp_path) == ["a.txt", "out", "tok", "whole"]


def test_shards_of_other_inputs_are_not_reused(tmp_path, monkeypatch):
    path = write_text(tmp_path / "a.txt", documents())

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
        yield

    monkeypatch.setattr(prepare_module, "pack_blocks", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_paragraphs(tokenizer(), [path], tmp_path / "out", block_size=16, val_fraction=0)
    monkeypatch.undo()
    write_text(tmp_path / "a.txt", documents(60))  # changed since its shards were made
    os.utime(path, (os.stat(path).st_mtime + 10,) * 2)
    result = prepare_paragraphs(tokenizer(), [path], tmp_path / "out", block_size=16, val_fraction=0)
    fresh = prepare_paragraphs(tokenizer(), [path], tmp_path / "fresh", block_size=16, val_fraction=0)
    assert stream(result["train"]).tolist() == stream(fresh["train"]).tolist()
