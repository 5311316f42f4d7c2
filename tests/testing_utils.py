"""Small shared helpers for the test suite: tiny configs and a tokenizer trained in memory (no downloads)."""

from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from scratchgpt import ScratchGPTConfig


FIXTURES = Path(__file__).parent / "fixtures"

SAMPLE_TEXT = (
    "The quick brown fox jumps over the lazy dog. Hello world! How are you today? "
    "I am fine, thanks. Language models predict the next token from the ones before it. "
) * 20


def tiny_config(**overrides) -> ScratchGPTConfig:
    """A 2-layer, 32-dim model with dropout off, so outputs are deterministic."""
    fields = dict(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=4, n_inner=64,
                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return ScratchGPTConfig(**{**fields, **overrides})


@lru_cache(maxsize=1)
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with 300 ids trained on SAMPLE_TEXT; id 0 is <|endoftext|>, id 1 <|pad|>."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator([SAMPLE_TEXT], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>",
                                   bos_token="<|endoftext|>", pad_token="<|pad|>")
