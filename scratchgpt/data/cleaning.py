"""Optional text cleaning, in four modes: off, lenient, balanced, strict.

| step | lenient | balanced | strict |
|---|---|---|---|
| Unicode normalisation | NFC | NFC | NFKC |
| control characters (all but newline and tab) | removed | removed | removed, and format characters (zero-width ...) too |
| whitespace | - | runs of spaces/tabs -> one space, 3+ newlines -> 2, trailing spaces cut | the same |
| too-short documents (characters of content) | empty dropped | < 16 dropped | < 64 dropped |
| exact duplicates | dropped | dropped | dropped |

A long text document read in pieces (see ``sources``) is cleaned piece by piece: leading and trailing whitespace is
cut only at the document's own start and end, and its pieces are never dropped as too short or duplicates.
Conversations are cleaned message by message; their length is the length of all their content, and two
conversations are duplicates when every message is equal. ``clean_batch`` is a pure function over a batch of the
documents dataset (``text`` / ``messages`` columns); it also returns per-document counts of what each step removed,
which ``clean_documents`` sums into the report.
"""

import hashlib
import json
import re
import unicodedata

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset


__all__ = ["CLEAN_MODES", "clean_batch", "clean_documents"]


CLEAN_MODES = {
    "lenient": {"normal_form": "NFC", "format_chars": False, "whitespace": False, "min_chars": 1},
    "balanced": {"normal_form": "NFC", "format_chars": False, "whitespace": True, "min_chars": 16},
    "strict": {"normal_form": "NFKC", "format_chars": True, "whitespace": True, "min_chars": 64},
}

_SPACE_RUNS = re.compile(r"[ \t]+")
_TRAILING_SPACES = re.compile(r"[ \t]+\n")
_NEWLINE_RUNS = re.compile(r"\n{3,}")


def _is_removed(char: str, format_chars: bool) -> bool:
    category = unicodedata.category(char)
    return (category == "Cc" and char not in "\n\t") or (format_chars and category == "Cf")


def _clean_text(text: str, settings: dict, counts: dict, starts: bool = True, ends: bool = True) -> str:
    normalised = unicodedata.normalize(settings["normal_form"], text)
    counts["normalised"] += normalised != text
    kept = "".join(c for c in normalised if not _is_removed(c, settings["format_chars"]))
    counts["control_chars_removed"] += len(normalised) - len(kept)
    if settings["whitespace"]:
        collapsed = _NEWLINE_RUNS.sub("\n\n", _TRAILING_SPACES.sub("\n", _SPACE_RUNS.sub(" ", kept)))
        collapsed = collapsed.lstrip() if starts else collapsed
        collapsed = collapsed.rstrip() if ends else collapsed
        counts["whitespace_chars_removed"] += len(kept) - len(collapsed)
        kept = collapsed
    return kept


def clean_batch(batch: dict, mode: str) -> dict:
    """Clean a batch of documents; adds ``keep_length`` (characters of content) and ``digest`` (for exact
    duplicates) plus the per-step counts ``normalised``, ``control_chars_removed``, ``whitespace_chars_removed``."""
    settings = CLEAN_MODES[mode]
    out = {"text": [], "messages": [], "length": [], "digest": [], "is_piece": [], "normalised": [],
           "control_chars_removed": [], "whitespace_chars_removed": []}
    n = len(batch["text"])
    pieces, ends = batch.get("piece") or [0] * n, batch.get("ends_document") or [True] * n
    for text, messages, piece, end in zip(batch["text"], batch["messages"], pieces, ends):
        counts = {"normalised": 0, "control_chars_removed": 0, "whitespace_chars_removed": 0}
        if messages is None:
            text = _clean_text(text, settings, counts, starts=piece == 0, ends=end)
            length, key = len(text.strip()), text
        else:
            messages = [{"role": m["role"], "content": _clean_text(m["content"], settings, counts)} for m in messages]
            length = sum(len(m["content"].strip()) for m in messages)
            key = json.dumps(messages, ensure_ascii=False)
        out["text"].append(text)
        out["messages"].append(messages)
        out["length"].append(length)
        out["is_piece"].append(not (piece == 0 and end))
        out["digest"].append(hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest())
        for name, value in counts.items():
            out[name].append(value)
    return out


def clean_documents(documents: Dataset, mode: str, num_proc: int | None = None,
                    seen: set[bytes] | None = None) -> tuple[Dataset, dict]:
    """Apply a cleaning mode to a documents dataset; returns the cleaned dataset and what each step removed.

    ``seen`` carries exact-duplicate detection across the shards of one corpus: the digests of the documents kept
    from earlier shards, to which this call adds its own; the cleaned dataset then keeps its ``digest`` column, from
    which a resumed job rebuilds the set."""
    if mode == "off":
        return documents, {"mode": "off"}
    if mode not in CLEAN_MODES:
        raise ValueError(f"unknown cleaning mode {mode!r}; use off, {', '.join(CLEAN_MODES)}")
    cleaned = documents.map(clean_batch, batched=True, num_proc=num_proc, fn_kwargs={"mode": mode},
                            desc=f"Cleaning ({mode})")
    table = cleaned.data
    lengths = table.column("length").to_numpy()
    long_enough = lengths >= CLEAN_MODES[mode]["min_chars"]
    # first occurrence of each digest wins; a set of 16-byte digests costs ~100 bytes per document
    shared = seen is not None
    seen = seen if shared else set()
    first = np.zeros(len(lengths), dtype=bool)
    index = 0
    for chunk in table.column("digest").chunks:  # chunk by chunk: never the whole column as Python objects
        for digest in chunk.to_pylist():
            if digest not in seen:
                seen.add(digest)
                first[index] = True
            index += 1
    # a piece of a longer document is kept whatever its length or content: dropping it would cut the document
    pieces = table.column("is_piece").to_numpy(zero_copy_only=False)
    long_enough |= pieces
    first |= pieces
    keep = long_enough & first
    # documents, not records: a long document is read in ~8,000-character pieces, each a record, counted once here
    ends = table.column("ends_document").to_numpy(zero_copy_only=False)
    report = {
        "mode": mode,
        "documents_in": int(ends.sum()),
        "documents_normalised": int(pc.sum(table.column("normalised")).as_py() or 0),
        "control_chars_removed": int(pc.sum(table.column("control_chars_removed")).as_py() or 0),
        "whitespace_chars_removed": int(pc.sum(table.column("whitespace_chars_removed")).as_py() or 0),
        "too_short_removed": int((~long_enough).sum()),
        "duplicates_removed": int((long_enough & ~first).sum()),
        "documents_out": int((keep & ends).sum()),
    }
    kept = cleaned.select(np.flatnonzero(keep)).select_columns(documents.column_names + ["digest"] * shared)
    return kept, report
