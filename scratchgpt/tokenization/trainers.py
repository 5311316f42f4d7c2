"""Train byte-level BPE and character tokenizers with ``tokenizers`` and wrap them as transformers tokenizers.

Both kinds share the special tokens and the chat template below, save with ``save_pretrained`` and load with
``AutoTokenizer.from_pretrained`` anywhere (no scratchgpt code is needed to load them).
"""

import re
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
    "UNMARKED_CHAT_TEMPLATE",
    "plain_chat_template",
    "has_assistant_markers",
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

# <|user|>\n{content}<|end|>\n per message; the generation prompt opens an assistant turn. The assistant's content and
# its <|end|> sit inside {% generation %} ... {% endgeneration %}: transformers records those spans for
# apply_chat_template(..., return_assistant_tokens_mask=True) (train only on assistant turns; TRL's
# assistant_only_loss) and renders the text byte-for-byte as without them. The tags have no whitespace control
# ({%- -%}): @huggingface/jinja (the Hub's and transformers.js' renderer) accepts that form only from 0.5.8 on.
# Plain jinja2 does not know the tag, so files read by other engines (GGUF for llama.cpp) get
# ``plain_chat_template(CHAT_TEMPLATE)``; llama-cpp-python's own formatter skips it.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('unknown role ' + message['role'] + '; expected system, user or assistant') }}"
    "{%- endif -%}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}"
    "{%- else -%}{{ message['content'] + '<|end|>' }}{%- endif -%}"
    "{{ '\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\n' }}{%- endif -%}"
)
# The template of tokenizers saved before the generation markers: same text, no assistant spans.
UNMARKED_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('unknown role ' + message['role'] + '; expected system, user or assistant') }}"
    "{%- endif -%}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\n' }}{%- endif -%}"
)
_GENERATION_TAG = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")


def plain_chat_template(template: str) -> str:
    """``template`` without ``{% generation %}`` / ``{% endgeneration %}`` tags: the same rendered text, for jinja
    engines other than transformers' (plain jinja2, llama.cpp) that reject the tag."""
    return _GENERATION_TAG.sub("", template)


def has_assistant_markers(template: str | None) -> bool:
    """Whether a chat template marks assistant content with ``{% generation %}`` (needed for assistant masks)."""
    return bool(template) and _GENERATION_TAG.search(template) is not None


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
    at_most: bool = False,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer of exactly ``vocab_size`` ids.

    ``texts`` is any iterable of strings or of lists of strings (e.g. ``ds.iter(batch_size=1000)`` column batches,
    a generator over files); it is consumed once, as a stream, so corpora larger than memory are fine. ``length``
    (number of items) only improves the progress bar. Byte-level means every Unicode string round-trips exactly and
    there is no unknown token. Special tokens take the first ids, in order.

    Raises ``ValueError`` if ``vocab_size`` cannot hold the 256 byte symbols plus the special tokens, if there is no
    text, or if the corpus is too small (at ``min_frequency``) to learn that many merges; with ``at_most`` it then
    returns the smaller vocabulary the corpus supports instead.
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
    if tokenizer.get_vocab_size() != vocab_size and not at_most:
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
                    min_frequency: int | None = None, show_progress: bool = True,
                    at_most: bool = False) -> PreTrainedTokenizerFast:
    """``train_bpe_tokenizer`` (default vocab 32,000, min_frequency 2) or ``train_char_tokenizer`` (no size bound,
    min_frequency 1) by ``kind``; the one entry point the CLI and train.py share."""
    if kind == "bpe":
        return train_bpe_tokenizer(texts, vocab_size=vocab_size or 32000, min_frequency=min_frequency or 2,
                                   show_progress=show_progress, at_most=at_most)
    if kind == "char":
        return train_char_tokenizer(texts, vocab_size=vocab_size, min_frequency=min_frequency or 1)
    raise ValueError(f"tokenizer type must be 'bpe' or 'char', got {kind!r}")


def encode_chats(tokenizer: PreTrainedTokenizerFast, conversations: list[list[dict[str, str]]],
                 add_generation_prompt: bool = False, return_assistant_masks: bool = False):
    """Token ids of conversations through the chat template, whose role and end-of-turn markers become special ids;
    the same strings inside a message stay text. Rendered and encoded in one batch; only a conversation whose
    messages contain such a string goes through transformers' ``sanitize_control_tokens`` (one at a time).

    With ``return_assistant_masks`` returns ``(ids, masks)``: per token, 1 where it is part of an assistant
    message's content or its ``<|end|>`` (the template's ``{% generation %}`` spans, from transformers'
    ``return_assistant_tokens_mask``), else 0. The template must carry those markers (``ValueError`` otherwise)."""
    added = tuple(tokenizer.added_tokens_encoder)
    quoting = [i for i, conversation in enumerate(conversations)
               if any(token in message["content"] for message in conversation for token in added)]
    if return_assistant_masks:
        if not has_assistant_markers(tokenizer.chat_template):
            raise ValueError("the tokenizer's chat template has no {% generation %} markers around assistant "
                             "content, so assistant tokens cannot be told apart")
        # verbose False: a conversation longer than the model's context is fine here (packing cuts it in blocks)
        encoded = tokenizer.apply_chat_template(conversations, add_generation_prompt=add_generation_prompt,
                                                tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
                                                tokenizer_kwargs={"verbose": False})
        ids, masks = encoded["input_ids"], encoded["assistant_masks"]
    else:
        rendered = tokenizer.apply_chat_template(conversations, tokenize=False,
                                                 add_generation_prompt=add_generation_prompt)
        ids = [encoding.ids for encoding in tokenizer.backend_tokenizer.encode_batch_fast(rendered,
                                                                                          add_special_tokens=False)]
    for i in quoting:
        ids[i] = _encode_sanitized(tokenizer, conversations[i], add_generation_prompt)
        if return_assistant_masks:
            masks[i] = _assistant_mask_by_message(tokenizer, conversations[i], ids[i], add_generation_prompt)
    return (ids, masks) if return_assistant_masks else ids


def _encode_sanitized(tokenizer, conversation, add_generation_prompt: bool = False) -> list[int]:
    return tokenizer.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt, tokenize=True,
                                         return_dict=False, sanitize_control_tokens=True)


def _assistant_mask_by_message(tokenizer, conversation, ids: list[int], add_generation_prompt: bool) -> list[int]:
    """The assistant mask of a conversation that quotes control tokens, where transformers cannot give one
    (``sanitize_control_tokens`` excludes ``return_assistant_tokens_mask``). The template's markers are special
    tokens, so the ids are the concatenation of each message's ids; in an assistant message's ids every token
    after the ``<|assistant|>\n`` header and before the final newline is masked in, which is transformers' rule
    (a token overlapping the span counts) for our template."""
    header = _encode_sanitized(tokenizer, [{"role": "assistant", "content": ""}])  # <|assistant|> \n <|end|> \n
    end = header.index(tokenizer.convert_tokens_to_ids(END_OF_TURN_TOKEN))
    opening, closing = header[:end], header[end + 1:]
    concatenated, mask = [], []
    for message in conversation:
        message_ids = _encode_sanitized(tokenizer, [message])
        concatenated += message_ids
        if message["role"] != "assistant":
            mask += [0] * len(message_ids)
            continue
        skip = len(opening) if message_ids[:len(opening)] == opening else 1
        mask += [0] * skip + [1] * (len(message_ids) - skip - len(closing)) + [0] * len(closing)
    if ids[:len(concatenated)] != concatenated:
        raise ValueError(f"cannot align the assistant mask of a conversation quoting control tokens: "
                         f"{conversation!r:.200}")
    return mask + [0] * (len(ids) - len(mask))  # the generation prompt, if any


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
