"""The original project's tokenizer files as transformers tokenizers.

Two formats: a ``tokenizers`` JSON (byte-level BPE with ``<|endoftext|>``, ``<|pad|>``,
``<|unk|>`` at ids 0-2), and a character format ``{"type": "character", "char_to_idx": {...}, ...}`` whose encoder
silently drops characters outside its vocabulary. Both load here with exactly the ids the original code gave; the
character tokenizer keeps the dropping behaviour, so ids stay identical to what the legacy model was trained on.
"""

import json
from pathlib import Path

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from .trainers import BOS_EOS_TOKEN, PAD_TOKEN, UNK_TOKEN, character_tokenizer


__all__ = ["load_legacy_tokenizer"]


def load_legacy_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load ``tokenizer.json`` of a legacy checkpoint (``path`` is the file or its folder)."""
    file = Path(path)
    if file.is_dir():
        file = file / "tokenizer.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file}: not found")
    text = file.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{file}: invalid JSON ({error.msg} at line {error.lineno})") from None

    if isinstance(data, dict) and data.get("type") == "character":
        char_to_idx = data.get("char_to_idx")
        if not isinstance(char_to_idx, dict) or not char_to_idx:
            raise ValueError(f"{file}: character tokenizer without a 'char_to_idx' table")
        if data.get("vocab_size", len(char_to_idx)) != len(char_to_idx):
            raise ValueError(f"{file}: vocab_size {data['vocab_size']} but char_to_idx has {len(char_to_idx)} entries")
        if sorted(char_to_idx.values()) != list(range(len(char_to_idx))):
            raise ValueError(f"{file}: char_to_idx ids are not 0..{len(char_to_idx) - 1}")
        return PreTrainedTokenizerFast(tokenizer_object=character_tokenizer(char_to_idx),
                                       clean_up_tokenization_spaces=False)

    if isinstance(data, dict) and "model" in data:
        tokenizer = Tokenizer.from_str(text)
        vocab = tokenizer.get_vocab()
        specials = {name: token for name, token in [("bos_token", BOS_EOS_TOKEN), ("eos_token", BOS_EOS_TOKEN),
                                                     ("pad_token", PAD_TOKEN), ("unk_token", UNK_TOKEN)]
                    if token in vocab}
        return PreTrainedTokenizerFast(tokenizer_object=tokenizer, clean_up_tokenization_spaces=False, **specials)

    raise ValueError(f"{file}: neither a tokenizers JSON nor a legacy character tokenizer")
