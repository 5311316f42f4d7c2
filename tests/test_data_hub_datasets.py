"""Hub datasets as inputs (``scratchgpt.data.hub_datasets``), read through ``datasets.load_dataset``: from a local
folder in a Hub dataset repository's layout (the loader code of a Hub dataset, without HTTP), and from the Hub
stand-in of ``tests/hub_server.py`` (``scratchgpt prepare`` in a subprocess, over HTTP as against the Hub: the
revision resolved to a commit, the file tree listed, parquet streamed by ranged requests, a private dataset read
with the user's token)."""

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scratchgpt.data.hub_datasets import HubDataset
from scratchgpt.data.prepare import load_prepared, prepare_dataset, read_metadata
from scratchgpt.data.sources import iter_documents, resolve_inputs
from scratchgpt.hub import _data_words
from scratchgpt.training.arguments import DataArguments
from scratchgpt.training.run import hub_datasets_read, public_names

from .hub_server import HubServer
from .test_data_prepare import prepared_content, tokenizer
from .testing_utils import hub_client_env

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


@pytest.fixture
def hub(hub_folder, tmp_path):
    """The Hub stand-in holding ``hub_folder``'s files as ``acme/stories`` (public) and ``acme/secret`` (private).
    Clients run in ``tmp_path/elsewhere``, not the folder holding acme/stories: there the name can only mean the
    Hub."""
    (tmp_path / "elsewhere").mkdir()
    server = HubServer().start()
    files = {str(path.relative_to(hub_folder)): path.read_bytes() for path in hub_folder.rglob("*") if path.is_file()}
    server.add_dataset("acme/stories", files)
    server.add_dataset("acme/secret", files, private=True)
    yield server
    server.stop()


def hub_prepare(hub, tmp_path, entry: str, output: str, **env) -> subprocess.CompletedProcess:
    """``scratchgpt prepare`` of one Hub input, run as a user runs it, against the stand-in."""
    if not (tmp_path / "tok").is_dir():
        tokenizer().save_pretrained(tmp_path / "tok")
    return subprocess.run([sys.executable, "-m", "scratchgpt.cli", "prepare", "--tokenizer", str(tmp_path / "tok"),
                           "--input", entry, "--block-size", "16", "--output", str(tmp_path / output)],
                          env=hub_client_env(hub, tmp_path / f"{output}-client", **env), cwd=tmp_path / "elsewhere",
                          capture_output=True, text=True, timeout=300)


def test_prepare_streams_a_dataset_from_the_hub_at_its_commit(hub, hub_folder, tmp_path):
    """Over HTTP, the same blocks as from the repository's files; the branch is read at its commit throughout."""
    done = hub_prepare(hub, tmp_path, "hf://datasets/acme/stories", "hub")
    assert done.returncode == 0, done.stderr[-3000:]
    sha = hub.repos["datasets/acme/stories"].commit
    metadata = read_metadata(tmp_path / "hub")
    assert metadata["sources"] == [{"path": f"hf://datasets/acme/stories@{sha}", "revision": sha, "size": None}]
    assert metadata["validation_sources"][0]["path"] == f"hf://datasets/acme/stories@{sha}?split=validation"
    assert metadata["split_method"] == "dataset_split"

    prepare_dataset(tokenizer(), ["hf://datasets/acme/stories"], tmp_path / "folder", block_size=16)
    hub_metadata, hub_blocks = prepared_content(tmp_path / "hub")
    assert hub_blocks == prepared_content(tmp_path / "folder")[1]
    assert hub_metadata["splits"] == read_metadata(tmp_path / "folder")["splits"]

    data_reads = [path for method, path in hub.requests if "/resolve/" in path and ".parquet" in path]
    assert data_reads and all(f"/resolve/{sha}/" in path for path in data_reads)


def test_a_private_dataset_needs_the_users_token(hub, tmp_path):
    refused = hub_prepare(hub, tmp_path, "hf://datasets/acme/secret", "anonymous")
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines()[-1] == ("scratchgpt prepare: error: acme/secret: no such dataset on the "
                                                       "Hub (or it is private and no token with access was found: hf "
                                                       "auth login)")
    assert not (tmp_path / "anonymous" / "train").exists()

    read = hub_prepare(hub, tmp_path, "hf://datasets/acme/secret", "with_token", HF_TOKEN="hf_secret_reader")
    assert read.returncode == 0, read.stderr[-3000:]
    assert hub.tokens_seen == {"hf_secret_reader"}
    assert read_metadata(tmp_path / "with_token")["splits"]["train"]["blocks"] > 0


def test_a_revision_that_is_not_there_is_one_line(hub, tmp_path):
    missing = hub_prepare(hub, tmp_path, "hf://datasets/acme/stories@v9", "out")
    assert missing.returncode != 0
    assert missing.stderr.strip().splitlines()[-1] == "scratchgpt prepare: error: acme/stories: no revision 'v9'"


def test_a_tokenizer_trains_on_a_dataset_from_the_hub(hub, tmp_path):
    """``scratchgpt tokenizer train`` takes the same input, counted first (a Hub dataset's size is not known)."""
    trained = subprocess.run([sys.executable, "-m", "scratchgpt.cli", "tokenizer", "train", "--input",
                              "hf://datasets/acme/stories", "--vocab-size", "300", "--train-bytes", "1000", "--output",
                              str(tmp_path / "tok")], env=hub_client_env(hub, tmp_path / "client"),
                             cwd=tmp_path / "elsewhere", capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr[-3000:]
    report = json.loads((tmp_path / "tok" / "tokenizer_sample.json").read_text())
    assert report["corpus_bytes"] == sum(len(story.encode()) for story in STORIES)
    assert 0 < report["sampled_bytes"] <= 1000
