"""Train byte-level BPE and character tokenizers with ``tokenizers`` and wrap them as transformers tokenizers.

Both kinds share the special tokens and the chat template below, save with ``save_pretrained`` and load with
``AutoTokenizer.from_pretrained`` anywhere (no scratchgpt code is needed to load them).
"""

from collections import Counter
from collections.abc import Iterable, Iterator

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast


__all__ = [
    "BOS_EOS_TOKEN",
    "PAD_TOKEN",
    "UNK_TOKEN",
    "END_OF_TURN_TOKEN",
    "SPECIAL_TOKENS",
    "CHAT_TEMPLATE",
    "train_bpe_tokenizer",
    "train_char_tokenizer",
    "train_tokenizer",
    "character_tokenizer",
    "encode_chats",
    "generation_eos_token_ids",
    "hold_out",
    "bytes_per_token",
]

BOS_EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
UNK_TOKEN = "<|unk|>"
END_OF_TURN_TOKEN = "<|end|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
# ids 0..5 in every tokenizer trained here; <|endoftext|> at 0 as in the original project
SPECIAL_TOKENS = [BOS_EOS_TOKEN, PAD_TOKEN, *ROLE_TOKENS, END_OF_TURN_TOKEN]
BYTE_ALPHABET_SIZE = 256

# <|user|>\n{content}<|end|>\n per message; the generation prompt opens an assistant turn.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('unknown role ' + message['role'] + '; expected system, user or assistant') }}"
    "{%- endif -%}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\n' }}{%- endif -%}"
)


def _wrap(tokenizer: Tokenizer, unk_token: str | None = None, chat: bool = True) -> PreTrainedTokenizerFast:
    vocab = tokenizer.get_vocab()
    specials = {name: token for name, token in
                [("bos_token", BOS_EOS_TOKEN), ("eos_token", BOS_EOS_TOKEN), ("pad_token", PAD_TOKEN),
                 ("unk_token", unk_token)] if token is not None and token in vocab}
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        chat_template=CHAT_TEMPLATE if chat else None,
        clean_up_tokenization_spaces=False,  # decoding must give back exactly the text that was encoded
        **specials,
    )


class _Counted:
    """Pass-through iterator that remembers how many non-empty texts went by (to reject empty corpora)."""

    def __init__(self, texts: Iterable):
        self.texts, self.count = texts, 0

    def __iter__(self) -> Iterator:
        for item in self.texts:
            if item:
                self.count += 1
            yield item


def train_bpe_tokenizer(
    texts: Iterable[str] | Iterable[list[str]],
    vocab_size: int = 32000,
    min_frequency: int = 2,
    special_tokens: list[str] = SPECIAL_TOKENS,
    show_progress: bool = True,
    length: int | None = None,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer of exactly ``vocab_size`` ids.

    ``texts`` is any iterable of strings or of lists of strings (e.g. ``ds.iter(batch_size=1000)`` column batches,
    a generator over files); it is consumed once, as a stream, so corpora larger than memory are fine. ``length``
    (number of items) only improves the progress bar. Byte-level means every Unicode string round-trips exactly and
    there is no unknown token. Special tokens take the first ids, in order.

    Raises ``ValueError`` if ``vocab_size`` cannot hold the 256 byte symbols plus the special tokens, if there is no
    text, or if the corpus is too small (at ``min_frequency``) to learn that many merges.
    """
    minimum = BYTE_ALPHABET_SIZE + len(special_tokens)
    if vocab_size < minimum:
        raise ValueError(f"vocab_size {vocab_size} is too small: a byte-level BPE needs at least {minimum} "
                         f"({BYTE_ALPHABET_SIZE} bytes + {len(special_tokens)} special tokens)")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    counted = _Counted(texts)
    tokenizer.train_from_iterator(counted, trainer=trainer, length=length)
    if counted.count == 0:
        raise ValueError("no text to train the tokenizer on")
    if tokenizer.get_vocab_size() != vocab_size:
        raise ValueError(f"the corpus supports only {tokenizer.get_vocab_size()} tokens at min_frequency="
                         f"{min_frequency}, fewer than vocab_size {vocab_size}: give more text or a smaller size")
    return _wrap(tokenizer)


def character_tokenizer(vocab: dict[str, int], unk_token: str | None = None) -> Tokenizer:
    """A character-level ``tokenizers.Tokenizer``: one id per character, decoding by plain concatenation.

    A character outside ``vocab`` becomes ``unk_token``; with ``unk_token=None`` it is dropped (the behaviour of
    the original project's character encoder). Multi-character entries of ``vocab`` (special tokens) are matched
    whole, as added tokens.
    """
    characters = [token for token in vocab if len(token) == 1]
    # a BPE without merges over an unsplit text is exactly a character lookup
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=unk_token))
    if unk_token is None:
        known = "".join(f"\\x{{{ord(c):x}}}" for c in characters)
        tokenizer.normalizer = normalizers.Replace(Regex(f"[^{known}]"), "")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens([token for token in vocab if len(token) > 1])
    return tokenizer


def train_char_tokenizer(
    texts: Iterable[str] | Iterable[list[str]],
    vocab_size: int | None = None,
    min_frequency: int = 1,
    special_tokens: list[str] = SPECIAL_TOKENS,
) -> PreTrainedTokenizerFast:
    """Train a character-level tokenizer: the special tokens, ``<|unk|>``, then every character seen at least
    ``min_frequency`` times, in code-point order.

    ``vocab_size``, if given, is an upper bound: the most frequent characters are kept. Characters outside the
    vocabulary encode as ``<|unk|>``. ``texts`` is streamed once (memory grows with the number of distinct
    characters only).
    """
    counts: Counter = Counter()
    for item in texts:
        for text in [item] if isinstance(item, str) else item:
            counts.update(text)
    if not counts:
        raise ValueError("no text to train the tokenizer on")
    specials = [*special_tokens, UNK_TOKEN]
    kept = [c for c, n in counts.most_common() if n >= min_frequency]
    if vocab_size is not None:
        if vocab_size <= len(specials):
            raise ValueError(f"vocab_size {vocab_size} is too small: the {len(specials)} special tokens need "
                             f"{len(specials)} ids and at least one character must fit")
        kept = kept[: vocab_size - len(specials)]
    vocab = {token: i for i, token in enumerate(specials + sorted(kept))}
    return _wrap(character_tokenizer(vocab, unk_token=UNK_TOKEN), unk_token=UNK_TOKEN)


def train_tokenizer(texts: Iterable[str], kind: str = "bpe", vocab_size: int | None = None,
                    min_frequency: int | None = None, show_progress: bool = True) -> PreTrainedTokenizerFast:
    """``train_bpe_tokenizer`` (default vocab 32,000, min_frequency 2) or ``train_char_tokenizer`` (no size bound,
    min_frequency 1) by ``kind``; the one entry point the CLI and train.py share."""
    if kind == "bpe":
        return train_bpe_tokenizer(texts, vocab_size=vocab_size or 32000, min_frequency=min_frequency or 2,
                                   show_progress=show_progress)
    if kind == "char":
        return train_char_tokenizer(texts, vocab_size=vocab_size, min_frequency=min_frequency or 1)
    raise ValueError(f"tokenizer type must be 'bpe' or 'char', got {kind!r}")


def encode_chats(tokenizer: PreTrainedTokenizerFast, conversations: list[list[dict[str, str]]],
                 add_generation_prompt: bool = False) -> list[list[int]]:
    """Token ids of conversations through the chat template, whose role and end-of-turn markers become special ids;
    the same strings inside a message stay text. Rendered and encoded in one batch; only a conversation whose
    messages contain such a string goes through transformers' ``sanitize_control_tokens`` (one at a time)."""
    rendered = tokenizer.apply_chat_template(conversations, tokenize=False, add_generation_prompt=add_generation_prompt)
    encodings = tokenizer.backend_tokenizer.encode_batch_fast(rendered, add_special_tokens=False)
    ids = [encoding.ids for encoding in encodings]
    added = tuple(tokenizer.added_tokens_encoder)
    for i, conversation in enumerate(conversations):
        if any(token in message["content"] for message in conversation for token in added):
            ids[i] = tokenizer.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt,
                                                   tokenize=True, return_dict=False, sanitize_control_tokens=True)
    return ids


def generation_eos_token_ids(tokenizer: PreTrainedTokenizerFast) -> list[int]:
    """Ids that should end generation: ``<|endoftext|>`` and, for chat, the end-of-turn marker (where present)."""
    vocab = tokenizer.get_vocab()
    return [vocab[token] for token in (BOS_EOS_TOKEN, END_OF_TURN_TOKEN) if token in vocab]


def hold_out(texts: Iterable[str], every: int = 20, max_bytes: int = 1_000_000) -> tuple[Iterator[str], list[str]]:
    """Split a stream: every ``every``-th text (up to ``max_bytes`` of UTF-8 in all) goes to a held-out list, the
    rest to the returned iterator. The list fills as the iterator is consumed."""
    held: list[str] = []

    def training() -> Iterator[str]:
        size = 0
        for index, text in enumerate(texts):
            if index % every == every - 1 and size < max_bytes:
                held.append(text)
                size += len(text.encode("utf-8"))
            else:
                yield text

    return training(), held


def bytes_per_token(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> float:
    """Compression on ``texts``: UTF-8 bytes per token (higher is better; tokenizer-independent bytes)."""
    n_bytes = sum(len(text.encode("utf-8")) for text in texts)
    n_tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    return n_bytes / n_tokens if n_tokens else float("nan")
