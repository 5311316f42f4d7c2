"""Datasets on the Hugging Face Hub as inputs, read with ``datasets.load_dataset`` (streamed by default).

An input ``hf://datasets/ORG/NAME`` names a dataset repository, with options after ``?`` as in a URL::

    hf://datasets/roneneldan/TinyStories
    hf://datasets/HuggingFaceH4/ultrachat_200k?split=train_sft&column=messages
    hf://datasets/HuggingFaceFW/fineweb-edu@main?config=sample-10BT&streaming=true

``@REVISION`` (a branch, tag or commit), ``config`` (the dataset's configuration), ``split`` (default ``train``),
``column`` (a text column, or a conversation column of role/content messages; default ``text``, else
``messages``) and ``streaming`` (default true: rows are read as they download, and the raw dataset is never stored
whole; false downloads it into the ``datasets`` cache first). ``DataArguments.dataset_name`` and its companions
build such an entry. A private dataset is read with the token ``huggingface_hub`` finds (``hf auth login`` or
``HF_TOKEN``).

The name may also be a local folder in a Hub repository's layout (``data/train-*.parquet``, a ``README.md`` whose
YAML lists configs): ``load_dataset`` reads it exactly as it reads the repository, without the network.

A branch or tag is resolved to its commit before anything is read, and the commit is what a prepared folder and a
model card record: the data is the same however the branch moves later.
"""

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from urllib.parse import parse_qsl, quote, urlencode

from .records import Document, check_messages


__all__ = ["HUB_PREFIX", "HubDataset", "is_hub_input"]

HUB_PREFIX = "hf://datasets/"
_OPTIONS = ("config", "split", "column", "streaming")
VALIDATION_SPLITS = ("validation", "test")  # taken, in this order, as the validation split when there is one


def is_hub_input(entry: str) -> bool:
    return entry.startswith(HUB_PREFIX)


@dataclass(frozen=True)
class HubDataset:
    """One split of a dataset on the Hub (or in a local folder of the Hub's layout), as documents."""

    name: str
    config: str | None = None
    split: str = "train"
    revision: str | None = None
    column: str | None = None
    streaming: bool = True

    @classmethod
    def parse(cls, entry: str) -> "HubDataset":
        """The dataset an ``hf://datasets/...`` input names; ``ValueError`` for a malformed one."""
        if not is_hub_input(entry):
            raise ValueError(f"{entry}: not a Hub dataset (expected {HUB_PREFIX}ORG/NAME)")
        path, _, query = entry[len(HUB_PREFIX):].partition("?")
        name, _, revision = path.partition("@")
        if not name.strip("/"):
            raise ValueError(f"{entry}: no dataset named (expected {HUB_PREFIX}ORG/NAME)")
        options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=False))
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise ValueError(f"{entry}: unknown option {unknown[0]!r}; the options are {', '.join(_OPTIONS)}")
        streaming = options.get("streaming", "true").lower()
        if streaming not in ("true", "false", "1", "0"):
            raise ValueError(f"{entry}: streaming must be true or false, got {options['streaming']!r}")
        return cls(name=name, config=options.get("config") or None, split=options.get("split") or "train",
                   revision=revision or None, column=options.get("column") or None,
                   streaming=streaming in ("true", "1"))

    def uri(self) -> str:
        """The ``hf://datasets/...`` input for this dataset (``parse`` reads it back)."""
        options = {"config": self.config, "split": None if self.split == "train" else self.split,
                   "column": self.column, "streaming": None if self.streaming else "false"}
        query = urlencode({key: value for key, value in options.items() if value is not None})
        revision = f"@{self.revision}" if self.revision else ""
        return f"{HUB_PREFIX}{quote(self.name, safe='/')}{revision}{'?' + query if query else ''}"

    @property
    def is_local(self) -> bool:
        return os.path.isdir(self.name)

    def _where(self) -> str:
        return f"{self.name} ({'config ' + self.config + ', ' if self.config else ''}split {self.split})"

    def resolved(self) -> "HubDataset":
        """The same dataset at the commit its revision (default: the main branch) points to now; a local folder
        as it is. Raises ``ValueError`` for a dataset, config or split that does not exist, naming those that do."""
        import datasets
        from huggingface_hub import HfApi
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        dataset = self
        if not self.is_local:
            try:
                sha = HfApi().dataset_info(self.name, revision=self.revision).sha
            except RepositoryNotFoundError:
                raise ValueError(f"{self.name}: no such dataset on the Hub (or it is private and no token with "
                                 f"access was found: hf auth login)") from None
            except RevisionNotFoundError:
                raise ValueError(f"{self.name}: no revision {self.revision!r}") from None
            except Exception as error:  # no network, a proxy, a timeout: huggingface_hub's or its HTTP client's
                raise ValueError(f"{self.name}: the Hub could not be reached ({type(error).__name__}: "
                                 f"{(str(error).splitlines() or [''])[0][:200]})") from None
            dataset = replace(self, revision=sha)
        configs = datasets.get_dataset_config_names(dataset.name, revision=dataset.revision)
        if dataset.config is not None and dataset.config not in configs:
            raise ValueError(f"{dataset.name}: no config {dataset.config!r}; the dataset has {', '.join(configs)}")
        splits = dataset.split_names()
        if dataset.split not in splits:
            raise ValueError(f"{dataset.name}: no split {dataset.split!r}; the dataset has {', '.join(splits)}")
        return dataset

    def split_names(self) -> list[str]:
        import datasets

        return list(datasets.get_dataset_split_names(self.name, self.config, revision=self.revision))

    def validation(self) -> "HubDataset | None":
        """The dataset's own validation split (``validation``, else ``test``) when this is its ``train`` split."""
        if self.split != "train":
            return None
        names = self.split_names()
        split = next((name for name in VALIDATION_SPLITS if name in names), None)
        return replace(self, split=split) if split else None

    def describe(self) -> dict:
        """What decides whether data prepared from it is stale: the input and its commit (for a local folder, a
        digest of its files' names, sizes and modification times)."""
        if not self.is_local:
            return {"path": self.uri(), "revision": self.revision, "size": None}
        digest = hashlib.sha256()
        for root, _, files in sorted(os.walk(self.name)):
            for file in sorted(files):
                stat = os.stat(os.path.join(root, file))
                digest.update(f"{os.path.relpath(os.path.join(root, file), self.name)}\0{stat.st_size}\0"
                              f"{stat.st_mtime}\n".encode())
        return {"path": self.uri(), "revision": digest.hexdigest()[:40], "size": None}

    def documents(self) -> Iterator[Document]:
        """The split's documents, row by row: the text column's strings, or the conversation column's messages."""
        import datasets

        rows = datasets.load_dataset(self.name, self.config, split=self.split, revision=self.revision,
                                     streaming=self.streaming)
        names = list(rows.features) if rows.features is not None else None
        column = self.column or ("messages" if names is not None and "text" not in names and "messages" in names
                                 else "text")
        if names is not None and column not in names:
            raise ValueError(f"{self._where()}: no column {column!r}; the dataset has {', '.join(names)} (choose one "
                             f"with column=NAME, or text_column)")
        for number, row in enumerate(rows.select_columns([column]), 1):
            value = row[column]
            if isinstance(value, str):
                yield value
            elif isinstance(value, list):
                yield check_messages(value, f"{self._where()}: row {number}")
            else:
                raise ValueError(f"{self._where()}: row {number}: {column!r} is neither text nor a list of messages")
