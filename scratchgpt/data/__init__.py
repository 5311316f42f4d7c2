"""Data: raw corpora -> (optional cleaning) -> token ids -> packed blocks in a memory-mapped Arrow dataset."""

from .cleaning import CLEAN_MODES, clean_documents
from .prepare import collate_blocks, load_prepared, prepare_dataset, read_metadata
from .sources import iter_documents, iter_texts, resolve_inputs


__all__ = [
    "CLEAN_MODES",
    "clean_documents",
    "collate_blocks",
    "iter_documents",
    "iter_texts",
    "load_prepared",
    "prepare_dataset",
    "read_metadata",
    "resolve_inputs",
]
