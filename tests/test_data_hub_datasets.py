"""Hub datasets as inputs (``scratchgpt.data.hub_datasets``), read through ``datasets.load_dataset`` from a local
folder in a Hub dataset repository's layout: the same loader code as for the Hub, without the network."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scratchgpt.data.hub_datasets import HubDataset
from scratchgpt.data.prepare import load_prepared, prepare_dataset, read_metadata
from scratchgpt.data.sources import iter_documents, resolve_inputs
from scratchgpt.hub import _data_words
from scratchgpt.training.arguments import DataArguments
from scratchgpt.training.run import hub_datasets_read, public_names

from .test_data_prepare import prepared_content, tokenizer

README = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*.parquet
  - split: validation
    path: data/validation-*.parquet
- config_name: chats
  data_files:
  - split: train
    path: chats/train-*.parquet
---
# acme/stories
"""

STORIES = [f"story {i}: once upon a time there was a fox number {i}." for i in range(40)]
HELD_OUT = [f"held out {i}: the fox went home." for i in range(12)]
CHATS = [[{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": f"hello {i}"}] for i in range(6)]


@pytest.fixture
def hub_folder(tmp_path, monkeypatch):
    """``acme/stories`` in the Hub's layout, in the working folder (where load_dataset looks first): a default
    config with train (two files) and validation splits and a ``chats`` config of conversations."""
    root = tmp_path / "acme" / "stories"
    (root / "data").mkdir(parents=True)
    (root / "chats").mkdir()
    (root / "README.md").write_text(README)
    for part, stories in enumerate((STORIES[:25], STORIES[25:])):
        pq.write_table(pa.table({"text": stories, "id": list(range(len(stories)))}),
                       root / "data" / f"train-{part:05d}-of-00002.parquet")
    pq.write_table(pa.table({"text": HELD_OUT, "id": list(range(len(HELD_OUT)))}),
                   root / "data" / "validation-00000-of-00001.parquet")
    pq.write_table(pa.table({"conversation": CHATS}), root / "chats" / "train-00000-of-00001.parquet")
    monkeypatch.chdir(tmp_path)
    return root


@pytest.mark.parametrize("entry, expected", [
    ("hf://datasets/acme/stories", HubDataset("acme/stories")),
    ("hf://datasets/acme/stories@v1.0?config=chats&split=test&column=body&streaming=false",
     HubDataset("acme/stories", config="chats", split="test", revision="v1.0", column="body", streaming=False)),
])
def test_inputs_name_a_dataset_and_its_options(entry, expected):
    assert HubDataset.parse(entry) == expected
    assert HubDataset.parse(expected.uri()) == expected


@pytest.mark.parametrize("entry, message", [
    ("hf://datasets/", "no dataset named"),
    ("hf://datasets/acme/stories?colum=text", "unknown option 'colum'; the options are config, split, column"),
    ("hf://datasets/acme/stories?streaming=maybe", "streaming must be true or false, got 'maybe'"),
])
def test_malformed_inputs_are_one_line(entry, message):
    with pytest.raises(ValueError, match=message):
        HubDataset.parse(entry)


def test_a_text_column_streams_row_by_row_in_order(hub_folder):
    assert list(iter_documents(["hf://datasets/acme/stories"])) == STORIES
    assert list(iter_documents(["hf://datasets/acme/stories?streaming=false"])) == STORIES  # downloaded first
    assert list(iter_documents(["hf://datasets/acme/stories?split=validation"])) == HELD_OUT


def test_a_conversation_column_gives_conversations(hub_folder):
    assert list(iter_documents(["hf://datasets/acme/stories?config=chats&column=conversation"])) == CHATS


@pytest.mark.parametrize("entry, message", [
    ("hf://datasets/acme/stories?split=dev", "acme/stories: no split 'dev'; the dataset has train, validation"),
    ("hf://datasets/acme/stories?config=poems", "acme/stories: no config 'poems'; the dataset has default, chats"),
])
def test_a_missing_split_or_config_lists_those_there_are(hub_folder, entry, message):
    with pytest.raises(ValueError, match=message):
        resolve_inputs([entry])


def test_a_missing_column_lists_the_columns(hub_folder):
    with pytest.raises(ValueError, match=r"acme/stories \(split train\): no column 'body'; the dataset has text, id"):
        list(iter_documents(["hf://datasets/acme/stories?column=body"]))
    with pytest.raises(ValueError, match=r"row 1: 'id' is neither text nor a list of messages"):
        list(iter_documents(["hf://datasets/acme/stories?column=id"]))


def test_a_dataset_not_on_the_hub_is_one_line():
    # no network here: "could not be reached"; with one, the Hub answers that there is no such dataset
    with pytest.raises(ValueError, match=r"^scratchgpt-tests/no-such-dataset-3f9c: (no such dataset on the Hub|the "
                                         r"Hub could not be reached)"):
        resolve_inputs(["hf://datasets/scratchgpt-tests/no-such-dataset-3f9c"])


def test_prepare_takes_the_datasets_own_validation_split(hub_folder, tmp_path):
    """A Hub dataset's train and validation splits prepare token for token as the same texts in local files."""
    prepare_dataset(tokenizer(), ["hf://datasets/acme/stories"], tmp_path / "hub", block_size=16)
    metadata = read_metadata(tmp_path / "hub")
    assert metadata["split_method"] == "dataset_split"
    assert [source["path"] for source in metadata["validation_sources"]] == \
        ["hf://datasets/acme/stories?split=validation"]
    assert metadata["sources"][0]["revision"]  # the folder's content, for staleness

    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in STORIES))
    (tmp_path / "validation.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in HELD_OUT))
    prepare_dataset(tokenizer(), [str(tmp_path / "train.jsonl")], tmp_path / "local", block_size=16,
                    validation_inputs=[str(tmp_path / "validation.jsonl")])
    hub, local = prepared_content(tmp_path / "hub"), prepared_content(tmp_path / "local")
    assert hub[1] == local[1] and hub[0]["splits"] == local[0]["splits"]
    assert len(load_prepared(tmp_path / "hub")["validation"]) > 0

    # val_fraction 0 still means no validation; a split other than train is split like any input
    prepare_dataset(tokenizer(), ["hf://datasets/acme/stories"], tmp_path / "none", block_size=16, val_fraction=0)
    assert read_metadata(tmp_path / "none")["split_method"] == "none"


def test_a_changed_dataset_is_prepared_again(hub_folder, tmp_path):
    prepare_dataset(tokenizer(), ["hf://datasets/acme/stories"], tmp_path / "out", block_size=16)
    before = read_metadata(tmp_path / "out")
    pq.write_table(pa.table({"text": STORIES[::-1], "id": list(range(len(STORIES)))}),
                   hub_folder / "data" / "train-00000-of-00002.parquet")
    prepare_dataset(tokenizer(), ["hf://datasets/acme/stories"], tmp_path / "out", block_size=16)
    assert read_metadata(tmp_path / "out")["fingerprint"] != before["fingerprint"]


def test_dataset_arguments_become_an_input():
    args = DataArguments(dataset_name="HuggingFaceH4/ultrachat_200k", dataset_split="train_sft",
                         text_column="messages", dataset_revision="abc123")
    assert args.inputs == ["hf://datasets/HuggingFaceH4/ultrachat_200k@abc123?split=train_sft&column=messages"]
    assert DataArguments().inputs == ["chitchat"]
    both = DataArguments(inputs=["a.txt"], dataset_name="acme/stories")
    assert both.inputs == ["a.txt", "hf://datasets/acme/stories"]


def test_the_card_names_the_dataset_its_split_and_commit():
    sha = "0123456789abcdef0123456789abcdef01234567"
    data = {"sources": [{"path": f"hf://datasets/acme/stories@{sha}", "revision": sha, "size": None},
                        {"path": "/home/someone/private/notes.txt", "size": 1, "mtime": 0}],
            "validation_sources": [{"path": f"hf://datasets/acme/stories@{sha}?split=validation", "revision": sha,
                                    "size": None}]}
    read = hub_datasets_read(data)
    assert read == [{"name": "acme/stories", "config": None, "split": "train", "revision": sha},
                    {"name": "acme/stories", "config": None, "split": "validation", "revision": sha}]
    inputs = public_names([source["path"] for source in data["sources"]])
    assert inputs == [f"hf://datasets/acme/stories@{sha}", "notes.txt"]
    words = _data_words({"inputs": inputs, "hub_datasets": read[:1]})
    assert words == ("[acme/stories](https://huggingface.co/datasets/acme/stories) (train split, commit 0123456), "
                     "notes.txt")
