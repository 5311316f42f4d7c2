"""Tokenizers: train byte-level BPE or character tokenizers, and load the original project's tokenizer files."""

from .legacy import load_legacy_tokenizer
from .portable import make_portable, save_tokenizer
from .trainers import (
    CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    UNMARKED_CHAT_TEMPLATE,
    bytes_per_token,
    character_tokenizer,
    encode_chats,
    generation_eos_token_ids,
    has_assistant_markers,
    hold_out,
    plain_chat_template,
    train_bpe_tokenizer,
    train_char_tokenizer,
    train_tokenizer,
)


__all__ = [
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "UNMARKED_CHAT_TEMPLATE",
    "bytes_per_token",
    "character_tokenizer",
    "encode_chats",
    "generation_eos_token_ids",
    "has_assistant_markers",
    "hold_out",
    "load_legacy_tokenizer",
    "make_portable",
    "plain_chat_template",
    "save_tokenizer",
    "train_bpe_tokenizer",
    "train_char_tokenizer",
    "train_tokenizer",
]
