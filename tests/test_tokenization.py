import copy
import json
import subprocess
import sys
import textwrap
from functools import lru_cache

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from scratchgpt.data.sources import iter_documents, iter_texts
from scratchgpt.tokenization import (
    CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    UNMARKED_CHAT_TEMPLATE,
    bytes_per_token,
    encode_chats,
    generation_eos_token_ids,
    hold_out,
    load_legacy_tokenizer,
    plain_chat_template,
    save_tokenizer,
    train_bpe_tokenizer,
    train_char_tokenizer,
)

from .testing_utils import FIXTURES, SAMPLE_TEXT, TRANSFORMERS_4_PYTHON


LEGACY = FIXTURES / "legacy"

VARIED_SAMPLE = [
    "Hello world! How are you doing today?",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\nand CRLF",
    "Ünïcödé àccents, naïve café, Straße",
    "日本語のテキストと中文字符",
    "emoji 😀🎉👩‍👩‍👧 and flags 🇫🇷",
    "control \x00\x01\x7f characters",
    "code: def f(x): return x ** 2  # comment",
    "numbers 1234567890 3.14159 -42",
    "<|endoftext|> special in text <|pad|>",
    "",
    "ROMEO:\nBut, soft! what light through yonder window breaks?",
]


@lru_cache(maxsize=1)
def chitchat_sample() -> list[str]:
    return [text for _, text in zip(range(2000), iter_texts(iter_documents(["chitchat"])))]


@lru_cache(maxsize=1)
def bpe() -> "PreTrainedTokenizerFast":  # noqa: F821
    return train_bpe_tokenizer(chitchat_sample(), vocab_size=1000, show_progress=False)


# --- byte-level BPE ------------------------------------------------------------------------------------------------


def test_special_tokens_take_the_first_ids():
    tokenizer = bpe()
    assert tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS) == [0, 1, 2, 3, 4, 5]
    assert SPECIAL_TOKENS == ["<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 0, 1)
    for token in SPECIAL_TOKENS:
        assert tokenizer(f"a{token}b", add_special_tokens=False).input_ids.count(tokenizer.convert_tokens_to_ids(token)) == 1
    assert generation_eos_token_ids(tokenizer) == [0, 5]


def test_chat_template_renders_literally():
    tokenizer = bpe()
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"},
                    {"role": "assistant", "content": "Hello."}]
    rendered = tokenizer.apply_chat_template(conversation, tokenize=False)
    assert rendered == "<|system|>\nBe brief.<|end|>\n<|user|>\nHi!<|end|>\n<|assistant|>\nHello.<|end|>\n"
    prompt = tokenizer.apply_chat_template(conversation[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|user|>\nHi!<|end|>\n<|assistant|>\n")
    ids = tokenizer.apply_chat_template(conversation[:2], add_generation_prompt=True, return_dict=False)
    assert [i for i in ids if i < 6] == [2, 5, 3, 5, 4]  # system, end, user, end, assistant: one id each
    assert tokenizer.decode(ids) == prompt


CONVERSATIONS = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"},
     {"role": "assistant", "content": "Hello."}],
    [{"role": "user", "content": "two\n\nlines  "}, {"role": "assistant", "content": "  spaced\n"},
     {"role": "user", "content": "ok"}, {"role": "assistant", "content": "\nnewline first"}],
    [{"role": "assistant", "content": ""}, {"role": "user", "content": "😀 中文"}],
    [{"role": "user", "content": "say <|end|> and <|assistant|>"}, {"role": "assistant", "content": "<|end|> ok"}],
]


@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_generation_markers_leave_the_rendered_text_unchanged(add_generation_prompt):
    """transformers renders the marked template exactly as the unmarked one; so do plain jinja2 (the stripped
    template, as GGUF files carry it) and llama-cpp-python's formatter (which skips the tag)."""
    import jinja2

    tokenizer = bpe()
    assert tokenizer.chat_template == CHAT_TEMPLATE and "{% generation %}" in CHAT_TEMPLATE
    unmarked = jinja2.Environment().from_string(UNMARKED_CHAT_TEMPLATE)
    stripped = jinja2.Environment().from_string(plain_chat_template(CHAT_TEMPLATE))
    with pytest.raises(jinja2.TemplateSyntaxError, match="generation"):
        jinja2.Environment().from_string(CHAT_TEMPLATE)
    for conversation in CONVERSATIONS:
        rendered = tokenizer.apply_chat_template(conversation, tokenize=False,
                                                 add_generation_prompt=add_generation_prompt)
        assert rendered == unmarked.render(messages=conversation, add_generation_prompt=add_generation_prompt)
        assert rendered == stripped.render(messages=conversation, add_generation_prompt=add_generation_prompt)


@pytest.mark.hfjinja
def test_the_hubs_javascript_renderer_renders_the_template_as_transformers_does(tmp_path):
    """@huggingface/jinja renders chat templates on the Hub and in transformers.js; it must accept the generation
    tags and give the same text."""
    from .conftest import HF_JINJA

    script = tmp_path / "render.mjs"
    script.write_text(
        f'import {{ Template }} from "{(HF_JINJA / "dist" / "index.js").as_uri()}";\n'
        'import fs from "fs";\n'
        'const {template, conversations} = JSON.parse(fs.readFileSync(0, "utf8"));\n'
        "const compiled = new Template(template);\n"
        "console.log(JSON.stringify(conversations.map(([messages, add]) =>\n"
        "  compiled.render({messages, add_generation_prompt: add}))));\n")
    cases = [[conversation, add] for conversation in CONVERSATIONS for add in (False, True)]
    result = subprocess.run(["node", str(script)], input=json.dumps({"template": CHAT_TEMPLATE, "conversations": cases}),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    rendered = json.loads(result.stdout)
    assert rendered == [bpe().apply_chat_template(c, tokenize=False, add_generation_prompt=a) for c, a in cases]


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_assistant_masks_cover_exactly_assistant_content_and_its_end(kind):
    tokenizer = bpe() if kind == "bpe" else train_char_tokenizer([*chitchat_sample(), "<|> 😀 中文"])
    ids, masks = encode_chats(tokenizer, CONVERSATIONS, return_assistant_masks=True)
    assert ids == encode_chats(tokenizer, CONVERSATIONS)  # the same ids with or without masks
    for conversation, conversation_ids, mask in zip(CONVERSATIONS, ids, masks):
        assert len(mask) == len(conversation_ids)
        trained = tokenizer.decode([i for i, m in zip(conversation_ids, mask) if m])
        expected = "".join(m["content"] + "<|end|>" for m in conversation if m["role"] == "assistant")
        assert trained == expected
        end, assistant = tokenizer.convert_tokens_to_ids(["<|end|>", "<|assistant|>"])
        untrained = [i for i, m in zip(conversation_ids, mask) if not m]  # the special ids, not quoted strings
        assert untrained.count(end) == sum(m["role"] != "assistant" for m in conversation)
        assert untrained.count(assistant) == sum(m["role"] == "assistant" for m in conversation)


def test_assistant_masks_need_the_generation_markers():
    tokenizer = copy.deepcopy(bpe())
    tokenizer.chat_template = UNMARKED_CHAT_TEMPLATE
    with pytest.raises(ValueError, match="no {% generation %} markers"):
        encode_chats(tokenizer, CONVERSATIONS[:1], return_assistant_masks=True)


def test_chat_template_rejects_unknown_roles():
    with pytest.raises(Exception, match="unknown role robot"):
        bpe().apply_chat_template([{"role": "robot", "content": "beep"}], tokenize=False)


@pytest.mark.parametrize("vocab_size", [300, 777, 1000])
def test_vocabulary_size_is_exactly_as_asked(vocab_size):
    tokenizer = train_bpe_tokenizer(chitchat_sample(), vocab_size=vocab_size, show_progress=False)
    assert len(tokenizer) == vocab_size == tokenizer.backend_tokenizer.get_vocab_size()


def test_vocabulary_smaller_than_bytes_plus_specials_is_an_error():
    with pytest.raises(ValueError, match="at least 262 \\(256 bytes \\+ 6 special tokens\\)"):
        train_bpe_tokenizer(["some text"], vocab_size=261)


def test_corpus_too_small_for_the_vocabulary_is_an_error():
    with pytest.raises(ValueError, match="supports only .* fewer than vocab_size 5000"):
        train_bpe_tokenizer(["tiny corpus"] * 3, vocab_size=5000, show_progress=False)


def test_merges_need_two_occurrences_by_default():
    """A merge seen once is noise: BPE's default min_frequency is 2 in both entry points; the char tokenizer keeps
    every character it sees (min_frequency 1)."""
    from scratchgpt.tokenization.trainers import train_tokenizer

    # 19 distinct words, each once: 327 tokens are possible with merges seen once, 268 with merges seen twice
    texts = ["alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau"]
    assert len(train_bpe_tokenizer(texts, vocab_size=300, min_frequency=1, show_progress=False)) == 300
    for train in (lambda: train_bpe_tokenizer(texts, vocab_size=300, show_progress=False),
                  lambda: train_tokenizer(texts, "bpe", vocab_size=300, show_progress=False)):
        with pytest.raises(ValueError, match="supports only 268 tokens at min_frequency=2"):
            train()
    assert "\N{GREEK SMALL LETTER ALPHA}" in train_tokenizer(["\N{GREEK SMALL LETTER ALPHA}b"], "char").get_vocab()


def test_empty_corpus_is_an_error():
    with pytest.raises(ValueError, match="no text"):
        train_bpe_tokenizer(iter([]), vocab_size=300, show_progress=False)


def test_training_is_deterministic():
    first = train_bpe_tokenizer(chitchat_sample(), vocab_size=800, show_progress=False)
    second = train_bpe_tokenizer(iter(chitchat_sample()), vocab_size=800, show_progress=False)
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()


def test_training_accepts_batches_of_texts():
    # e.g. a datasets column read with ds.iter(batch_size=...)
    texts = chitchat_sample()
    batches = ([texts[i: i + 100]] for i in range(0, len(texts), 100))
    batched = train_bpe_tokenizer((batch for [batch] in batches), vocab_size=800, show_progress=False)
    assert batched.backend_tokenizer.to_str() == train_bpe_tokenizer(texts, vocab_size=800,
                                                                     show_progress=False).backend_tokenizer.to_str()


@settings(max_examples=300, deadline=None)
@given(st.text())
@example("")
@example("😀 emoji, 中文, 日本語, \x00\x1f\x7f\u200b, \ud7ff\ue000\U0010ffff")
@example("  \n\n\t  ")
def test_bpe_round_trip_is_lossless(text):
    tokenizer = bpe()
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == text
    assert tokenizer.unk_token_id is None or tokenizer.unk_token_id not in ids


def test_hold_out_takes_every_nth_text_out_of_the_training_stream():
    texts = [f"text number {i}" for i in range(100)]
    training, held = hold_out(iter(texts), every=20)
    trained = list(training)
    assert held == texts[19::20] and trained == [t for i, t in enumerate(texts) if i % 20 != 19]
    training, held = hold_out(iter(texts), every=20, max_bytes=len(texts[19]))  # the byte cap stops holding out
    assert len(list(training)) == 99 and held == [texts[19]]


def test_bytes_per_token_is_bytes_over_tokens():
    texts = ["héllo wörld", "plain ascii text", "日本語"]
    tokenizer = bpe()
    n_tokens = sum(len(tokenizer.backend_tokenizer.encode(t, add_special_tokens=False).ids) for t in texts)
    assert bytes_per_token(tokenizer, texts) == sum(len(t.encode()) for t in texts) / n_tokens


def test_compression_is_measured_on_held_out_text():
    training, held = hold_out(iter(chitchat_sample()), every=10)
    tokenizer = train_bpe_tokenizer(training, vocab_size=1000, show_progress=False)
    assert len(held) == 200
    assert 2.0 < bytes_per_token(tokenizer, held) < 5.0
    assert bytes_per_token(tokenizer, held) > bytes_per_token(train_char_tokenizer(chitchat_sample()), held)


# --- character level -----------------------------------------------------------------------------------------------


def test_char_tokenizer_is_one_id_per_character():
    tokenizer = train_char_tokenizer([SAMPLE_TEXT, "日本 😀"])
    text = "Hello world! 日本😀"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert len(ids) == len(text)
    assert tokenizer.decode(ids) == text  # concatenation, no inserted spaces
    assert tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS) == [0, 1, 2, 3, 4, 5]
    assert tokenizer.unk_token == "<|unk|>" and tokenizer.unk_token_id == 6
    # characters in code-point order after the specials
    assert tokenizer.convert_ids_to_tokens([7, 8]) == [" ", "!"]


def test_char_tokenizer_maps_unknown_characters_to_unk():
    tokenizer = train_char_tokenizer(["abc"])
    assert tokenizer("abz", add_special_tokens=False).input_ids == [7, 8, 6]


def test_char_tokenizer_vocab_size_keeps_the_most_frequent():
    tokenizer = train_char_tokenizer(["aaaa bbb cc d"], vocab_size=7 + 3)
    assert len(tokenizer) == 10
    assert set(tokenizer.convert_ids_to_tokens([7, 8, 9])) == {"a", "b", " "}


# --- loading anywhere ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("python", [sys.executable,
                                    pytest.param(str(TRANSFORMERS_4_PYTHON), marks=pytest.mark.transformers4)],
                         ids=["this-transformers", "transformers-4.57"])
def test_tokenizers_load_where_scratchgpt_is_not_importable(tmp_path, python):
    """Our saved tokenizers under this transformers and under 4.57 (whose AutoTokenizer has no TokenizersBackend):
    the same ids, text and chat prompt, with scratchgpt not importable."""
    tokenizers = {"bpe": bpe(), "char": train_char_tokenizer(chitchat_sample()[:100])}
    expected = {}
    for name, tokenizer in tokenizers.items():
        save_tokenizer(tokenizer, tmp_path / name)
        config = json.loads((tmp_path / name / "tokenizer_config.json").read_text())
        assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
        assert config["chat_template"] == (tmp_path / name / "chat_template.jinja").read_text() == CHAT_TEMPLATE
        expected[name] = tokenizer("Hi there 😀 <|user|>", add_special_tokens=False).input_ids
    (tmp_path / "expected.json").write_text(json.dumps(expected))
    script = textwrap.dedent(f"""
        import json, sys
        sys.modules["scratchgpt"] = None
        from transformers import AutoTokenizer
        expected = json.load(open({str(tmp_path / "expected.json")!r}))
        for name, ids in expected.items():
            tokenizer = AutoTokenizer.from_pretrained({str(tmp_path)!r} + "/" + name)
            assert tokenizer("Hi there 😀 <|user|>", add_special_tokens=False).input_ids == ids, name
            assert tokenizer.decode(ids) == "Hi there 😀 <|user|>" or name == "char", name
            chat = tokenizer.apply_chat_template([{{"role": "user", "content": "Hi"}}], tokenize=False,
                                                 add_generation_prompt=True)
            assert chat == "<|user|>\\nHi<|end|>\\n<|assistant|>\\n", chat
        print("tokenizers-ok")
    """)
    result = subprocess.run([python, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                            env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tokenizers-ok" in result.stdout


# --- legacy tokenizer files ------------------------------------------------------------------------------------------


def test_legacy_bpe_gives_the_same_ids_as_tokenizers():
    reference = Tokenizer.from_file(str(LEGACY / "checkpoint_gpt2_small" / "tokenizer.json"))
    tokenizer = load_legacy_tokenizer(LEGACY / "checkpoint_gpt2_small")
    assert len(tokenizer) == 32000
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    for text in VARIED_SAMPLE + chitchat_sample()[:300]:
        assert tokenizer(text).input_ids == reference.encode(text).ids, text
    assert tokenizer.decode(reference.encode("Hello world!").ids) == "Hello world!"


def legacy_char_encode(table: dict, text: str) -> list[int]:
    """The original project's character encoder: characters outside the vocabulary are dropped."""
    return [table["char_to_idx"][c] for c in text if c in table["char_to_idx"]]


@pytest.mark.parametrize("folder", ["checkpoint_tiny", "checkpoint_medium"])
def test_legacy_char_gives_the_legacy_encoder_ids(folder):
    table = json.loads((LEGACY / folder / "tokenizer.json").read_text())
    tokenizer = load_legacy_tokenizer(LEGACY / folder / "tokenizer.json")
    assert len(tokenizer) == table["vocab_size"]
    for text in VARIED_SAMPLE + chitchat_sample()[:300]:
        ids = tokenizer(text).input_ids
        assert ids == legacy_char_encode(table, text), text
        assert tokenizer.decode(ids) == "".join(table["idx_to_char"][str(i)] for i in ids)


def test_legacy_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json: not found"):
        load_legacy_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"type": "wordpiece"}')
    with pytest.raises(ValueError, match="neither a tokenizers JSON nor a legacy character tokenizer"):
        load_legacy_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"type": "character", "vocab_size": 3, "char_to_idx": {"a": 0}}')
    with pytest.raises(ValueError, match="vocab_size 3 but char_to_idx has 1 entries"):
        load_legacy_tokenizer(tmp_path)
