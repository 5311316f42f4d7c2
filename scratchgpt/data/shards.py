"""A work folder that survives a kill: finished shards of a long job, and a manifest of them.

``prepare`` reads and tokenizes a corpus in shards of about ``SHARD_BYTES`` of text. Each finished shard is saved
in the work folder (``save_to_disk`` under a temporary name, then renamed) and only then entered in
``manifest.json`` (written to a temporary file and renamed over the old one), so whatever moment a run dies at
(SIGKILL, a notebook's disconnect, a full disk), the manifest names only complete shards, and a re-run continues
after the last of them. The folder belongs to one job, named by its fingerprint: a folder left by other work (other
inputs, tokenizer or settings) is emptied first.
"""

import json
import os
import shutil
from pathlib import Path

from datasets import Dataset, concatenate_datasets, load_from_disk


__all__ = ["MANIFEST", "SHARD_BYTES", "ShardFolder", "work_folder"]

MANIFEST = "manifest.json"
# text per shard: a kill loses at most this much work, and a shard's documents are held in memory while it is built
SHARD_BYTES = 64 * 2**20


def work_folder(output: str | Path) -> Path:
    """Where the shards of the job building ``output`` are kept: a hidden folder beside it."""
    output = Path(output)
    return output.parent / f".{output.name}.partial"


class ShardFolder:
    """The finished shards of one job, by split (``train``, ``validation``), each with its manifest entry (what
    the job needs to go on after it: where the next shard starts, counts)."""

    def __init__(self, folder: str | Path, fingerprint: str):
        self.folder = Path(folder)
        manifest = self._read()
        if manifest is None or manifest.get("fingerprint") != fingerprint:
            shutil.rmtree(self.folder, ignore_errors=True)
            manifest = {"fingerprint": fingerprint, "splits": {}}
        self.folder.mkdir(parents=True, exist_ok=True)
        self.manifest = manifest
        self.tidy()

    def tidy(self) -> None:
        """Remove what an unfinished shard left (its scratch files, a save cut short); finished shards stay."""
        for leftover in [self.folder / "scratch", *self.folder.glob("*.tmp")]:
            shutil.rmtree(leftover, ignore_errors=True)

    def _read(self) -> dict | None:
        try:
            return json.loads((self.folder / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def _write(self) -> None:
        temporary = self.folder / f"{MANIFEST}.tmp"
        temporary.write_text(json.dumps(self.manifest, indent=1) + "\n", encoding="utf-8")
        os.replace(temporary, self.folder / MANIFEST)

    def _split(self, split: str) -> dict:
        return self.manifest["splits"].setdefault(split, {"shards": [], "complete": False})

    def entries(self, split: str) -> list[dict]:
        """The manifest entries of ``split``'s finished shards, in order."""
        return self._split(split)["shards"]

    def complete(self, split: str) -> bool:
        """Whether every shard of ``split`` is finished."""
        return self._split(split)["complete"]

    def scratch(self) -> Path:
        """An empty folder for the files a shard is made from (the next ``add`` removes it)."""
        scratch = self.folder / "scratch"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
        return scratch

    def add(self, split: str, shard: Dataset, entry: dict, complete: bool = False) -> None:
        """Save ``shard`` as ``split``'s next shard and enter it (with ``entry``) in the manifest. A shard left
        empty (cleaning dropped all of it) is entered but not saved: an Arrow folder of no rows cannot be loaded."""
        name = f"{split}-{len(self.entries(split)):05d}" if len(shard) else None
        if name is not None:
            temporary = self.folder / f"{name}.tmp"
            shard.save_to_disk(str(temporary))
            os.replace(temporary, self.folder / name)
        shutil.rmtree(self.folder / "scratch", ignore_errors=True)
        self.entries(split).append({"name": name, **entry})
        self._split(split)["complete"] = complete
        self._write()

    def finish(self, split: str) -> None:
        """Mark ``split`` complete (its last shard was already full when the stream ended)."""
        self._split(split)["complete"] = True
        self._write()

    def dataset(self, split: str) -> Dataset | None:
        """``split``'s shards as one memory-mapped dataset, in order (None if it has none)."""
        shards = [load_from_disk(str(self.folder / entry["name"])) for entry in self.entries(split) if entry["name"]]
        return concatenate_datasets(shards) if shards else None

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
