"""GGUF export, checked against llama.cpp itself (llama-cpp-python), not by reading our own file back.

The llama.cpp tests carry the ``llamacpp`` marker: they are skipped, with the install line as the reason, where
llama-cpp-python is missing (``pip install -e ".[gguf-check]"``; CI installs it).
"""

import json
import subprocess
import sys
import time
import urllib.request
from functools import lru_cache

import numpy as np
import pytest
import torch

from scratchgpt import ScratchGPTConfig, ScratchGPTForCausalLM
from scratchgpt.cli import main as cli
from scratchgpt.cli import save_model_folder
from scratchgpt.generation import chat_reply
from scratchgpt.data.sources import chitchat_conversations, iter_texts
from scratchgpt.modeling import gguf_export
from scratchgpt.modeling.convert import to_gguf
from scratchgpt.tokenization import (
    generation_eos_token_ids,
    plain_chat_template,
    train_bpe_tokenizer,
    train_char_tokenizer,
)

from .testing_utils import free_port

gguf = pytest.importorskip("gguf", reason='GGUF export needs the gguf package: pip install -e ".[gguf]"')

PROMPT = "Hello there! How are you doing today?\nI am fine, thanks. <|user|>"
VARIED = [
    "Hello world! How are you doing today?",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\n\n\nand CRLF\r\n",
    "Ünïcödé àccents, naïve café, Straße",
    "日本語のテキストと中文字符",
    "emoji 😀🎉👩‍👩‍👧 and flags 🇫🇷",
    "code: def f(x): return x ** 2  # comment",
    "numbers 1234567890 3.14159 -42",
    "<|endoftext|> special <|user|>\nhi<|end|>\n<|assistant|>\n",
    "whitespace    runs\t\t\tand   \n   lines",
]


@lru_cache(maxsize=None)
def tokenizer(vocab_size: int):
    texts = [t for _, t in zip(range(30000), iter_texts(chitchat_conversations()))]
    return train_bpe_tokenizer(texts, vocab_size=vocab_size, show_progress=False)


@lru_cache(maxsize=None)
def trained_model(vocab_size: int, tied: bool, width: int = 64) -> ScratchGPTForCausalLM:
    """A small model trained for a few steps on chitchat, so its logits are far from uniform (clear top tokens)."""
    tok = tokenizer(vocab_size)
    torch.manual_seed(0)
    config = ScratchGPTConfig(vocab_size=len(tok), n_positions=128, n_embd=width, n_layer=2, n_head=4,
                              n_inner=4 * width,
                              resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, activation_function="gelu_new",
                              tie_word_embeddings=tied, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = ScratchGPTForCausalLM(config)
    text = "\n".join(t for _, t in zip(range(3000), iter_texts(chitchat_conversations())))
    ids = torch.tensor(tok(text).input_ids)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(60):
        starts = torch.randint(0, len(ids) - 128, (8,))
        batch = torch.stack([ids[s: s + 128] for s in starts])
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


# --- the file itself (no llama.cpp needed) ----------------------------------------------------------------------------


def test_metadata_tokenizer_and_tensor_names(tmp_path):
    model, tok = trained_model(1000, tied=False), tokenizer(1000)
    path = to_gguf(model, tok, tmp_path / "m.gguf")
    reader = gguf.GGUFReader(path)
    field = lambda name: reader.fields[name].contents()  # noqa: E731
    assert field("general.architecture") == "gpt2"
    assert (field("gpt2.context_length"), field("gpt2.embedding_length"), field("gpt2.block_count"),
            field("gpt2.feed_forward_length"), field("gpt2.attention.head_count")) == (128, 64, 2, 256, 4)
    assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "gpt-2"
    assert field("tokenizer.ggml.tokens") == [tok.convert_ids_to_tokens(i) for i in range(len(tok))]
    assert field("tokenizer.ggml.token_type")[:6] == [gguf.TokenType.CONTROL] * 6  # our special tokens
    assert field("tokenizer.ggml.eos_token_id") == tok.eos_token_id and field("tokenizer.ggml.add_bos_token") is False
    assert field("tokenizer.ggml.eot_token_id") == tok.convert_tokens_to_ids("<|end|>")
    assert field("tokenizer.chat_template") == plain_chat_template(tok.chat_template)
    assert "{% generation %}" in tok.chat_template and "{% generation" not in field("tokenizer.chat_template")
    merges = field("tokenizer.ggml.merges")
    assert len(merges) == 1000 - 256 - 6 and all(len(m.split(" ")) == 2 for m in merges)
    names = {t.name for t in reader.tensors}
    assert "output.weight" in names and "blk.1.attn_qkv.weight" in names and len(names) == 4 + 12 * 2 + 1
    qkv = next(t for t in reader.tensors if t.name == "blk.0.attn_qkv.weight")
    np.testing.assert_array_equal(np.asarray(qkv.data), model.model.layers[0].attn.qkv.weight.detach().numpy())
    tied = to_gguf(trained_model(1000, tied=True), tok, tmp_path / "tied.gguf")
    assert "output.weight" not in {t.name for t in gguf.GGUFReader(tied).tensors}  # llama.cpp reuses token_embd
    assert not list(tmp_path.glob(".*partial"))
    # an existing file is refused, as the command line does, unless asked to replace it
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="m.gguf: already exists"):
        to_gguf(model, tok, path, dtype="f16")
    assert path.read_bytes() == before
    assert to_gguf(model, tok, path, dtype="f16", overwrite=True) == path and path.read_bytes() != before


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16", "q8_0"])
def test_each_tensor_is_stored_in_the_type_its_dtype_gives(tmp_path, dtype):
    """1-D tensors (norms, biases) stay float32 whatever the dtype, as llama.cpp's own converter keeps them;
    matrices take the dtype, and fall back to float16 where q8_0's 32-wide blocks do not divide their rows."""
    torch.manual_seed(0)
    tok = tokenizer(1000)
    model = ScratchGPTForCausalLM(ScratchGPTConfig(vocab_size=len(tok), n_positions=32, n_embd=48, n_layer=1,
                                                   n_head=2, n_inner=96, activation_function="gelu_new"))
    reader = gguf.GGUFReader(to_gguf(model, tok, tmp_path / "m.gguf", dtype=dtype))
    types = gguf.GGMLQuantizationType
    matrix = {"f32": types.F32, "f16": types.F16, "bf16": types.BF16, "q8_0": types.Q8_0}[dtype]
    for tensor in reader.tensors:
        rows_of_32 = tensor.shape[0] % 32 == 0  # gguf lists a tensor's shape innermost (a row's length) first
        expected = (types.F32 if len(tensor.shape) == 1 else
                    types.F16 if dtype == "q8_0" and not rows_of_32 else matrix)
        assert tensor.tensor_type == expected, (tensor.name, tensor.shape.tolist(), tensor.tensor_type.name)
    assert {len(t.shape) for t in reader.tensors} == {1, 2}


def test_what_llama_cpp_cannot_run_is_refused_in_one_line(tmp_path, capsys):
    char = train_char_tokenizer(["some text to learn characters from"])
    model = ScratchGPTForCausalLM(ScratchGPTConfig(vocab_size=len(char), n_positions=16, n_embd=32, n_layer=1,
                                                   n_head=2))
    with pytest.raises(ValueError, match="llama.cpp's gpt2 tokenizer is a byte-level BPE, and this tokenizer is not"):
        to_gguf(model, char, tmp_path / "char.gguf")
    with pytest.raises(ValueError, match="dtype must be one of f32, f16, bf16, q8_0"):
        to_gguf(trained_model(1000, False), tokenizer(1000), tmp_path / "x.gguf", dtype="q4")
    assert not list(tmp_path.iterdir())
    folder = tmp_path / "char-model"
    model.save_pretrained(folder)
    char.save_pretrained(folder)
    assert cli(["convert", "to-gguf", str(folder), str(tmp_path / "out.gguf")]) == 1
    assert "byte-level BPE" in capsys.readouterr().err and not (tmp_path / "out.gguf").exists()


def test_cli_export_notes_the_gelu_difference(tmp_path, capsys):
    tok = tokenizer(1000)
    model = ScratchGPTForCausalLM(ScratchGPTConfig(vocab_size=len(tok), n_positions=32, n_embd=32, n_layer=1,
                                                   n_head=2, activation_function="gelu"))
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    assert cli(["convert", "to-gguf", str(tmp_path / "model"), str(tmp_path / "m.gguf"), "--dtype", "q8_0"]) == 0
    printed = capsys.readouterr().out
    assert "llama.cpp computes GELU with tanh" in printed and "(q8_0," in printed
    assert gguf.GGUFReader(tmp_path / "m.gguf").fields["general.file_type"].contents() == 7  # MOSTLY_Q8_0


# --- against llama.cpp ------------------------------------------------------------------------------------------------


def llama(path, n_ctx=128):
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=2, seed=0)


def llama_logits(path, ids: list[int]) -> np.ndarray:
    model = llama(path)
    model.eval(ids)
    return np.array(model.scores[: len(ids)], dtype=np.float32)  # (T, V)


def our_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


@pytest.mark.llamacpp
@pytest.mark.parametrize("vocab_size", [1000, 8192])
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_llama_cpp_gives_our_logits_and_greedy_text(tmp_path, vocab_size, tied):
    model, tok = trained_model(vocab_size, tied), tokenizer(vocab_size)
    path = to_gguf(model, tok, tmp_path / "m.gguf", "f32")
    ids = tok(PROMPT).input_ids
    ours, theirs = our_logits(model, ids), llama_logits(path, ids)
    assert np.abs(ours - theirs).max() < 5e-3  # llama.cpp's fp16 GELU table and f16 KV cache: about 2e-3
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()
    # 20 greedy tokens through llama.cpp's KV cache
    expected = model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False, eos_token_id=None,
                              pad_token_id=tok.pad_token_id)[0, len(ids):].tolist()
    engine = llama(path)
    generated = []
    for token in engine.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0):
        generated.append(token)
        if len(generated) == 20:
            break
    assert generated == expected


@pytest.mark.llamacpp
def test_llama_cpp_tokenizes_as_we_do(tmp_path):
    tok = tokenizer(8192)
    path = to_gguf(trained_model(8192, False), tok, tmp_path / "m.gguf")
    engine = llama(path)
    for text in VARIED:
        # special-token strings as text, and as special tokens (as the chat template writes them)
        assert engine.tokenize(text.encode(), add_bos=False, special=False) == \
            tok(text, split_special_tokens=True).input_ids, text
        assert engine.tokenize(text.encode(), add_bos=False, special=True) == tok(text).input_ids, text
    assert engine.detokenize(tok(VARIED[5]).input_ids).decode() == VARIED[5]


@pytest.mark.llamacpp
@pytest.mark.parametrize("dtype, tolerance", [("f16", 1e-2), ("bf16", 1e-2)])
def test_half_precision_exports(tmp_path, dtype, tolerance):
    model, tok = trained_model(1000, False), tokenizer(1000)
    ids = tok(PROMPT).input_ids
    ours, theirs = our_logits(model, ids), llama_logits(to_gguf(model, tok, tmp_path / "m.gguf", dtype), ids)
    assert np.abs(ours - theirs).max() < tolerance * max(1.0, float(np.abs(ours).max()))
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()


@pytest.mark.llamacpp
@pytest.mark.parametrize("width", [64, 128, 256], ids=["64", "demo-128", "256"])
def test_q8_0_keeps_the_top_token(tmp_path, width):
    """q8_0 at the demo's width and wider, run on this machine's CPU with llama.cpp's defaults (weight repacking
    on): llama.cpp picks its matrix kernels by the CPU and the matrices' shapes. (It has crashed on q8_0 at the
    demo's width on CPUs with AMX unless repacking is off; a CPU without AMX cannot show that.)"""
    model, tok = trained_model(1000, False, width), tokenizer(1000)
    ids = tok(PROMPT * 2).input_ids
    ours, theirs = our_logits(model, ids), llama_logits(to_gguf(model, tok, tmp_path / "m.gguf", "q8_0"), ids)
    assert (ours.argmax(-1) == theirs.argmax(-1)).mean() >= 0.95


@pytest.mark.llamacpp
def test_a_broken_export_fails_the_comparison(tmp_path, monkeypatch):
    """The test of the test: one matrix written in GPT-2's Conv1D layout instead of transposed back."""
    model, tok = trained_model(1000, False), tokenizer(1000)
    original = gguf_export._tensors

    def one_not_transposed(model):
        return [(name, array.T.copy() if name == "blk.0.attn_output.weight" else array)
                for name, array in original(model)]

    monkeypatch.setattr(gguf_export, "_tensors", one_not_transposed)
    ids = tok(PROMPT).input_ids
    theirs = llama_logits(to_gguf(model, tok, tmp_path / "broken.gguf"), ids)
    assert np.abs(our_logits(model, ids) - theirs).max() > 5e-3


@pytest.mark.llamacpp
def test_llama_cpp_server_chats_as_scratchgpt_chat(tmp_path):
    """llama.cpp's OpenAI-compatible server (llama_cpp.server) on the exported file: its greedy chat reply, with the
    chat template from the file, equals `scratchgpt chat`'s on the saved model (repeat_penalty 1.0: the server's
    default, 1.1, changes greedy text)."""
    model, tok = trained_model(1000, False), tokenizer(1000)
    model.generation_config.eos_token_id = generation_eos_token_ids(tok)  # as train.py saves it
    save_model_folder(model, str(tmp_path / "model"), tok)
    assert cli(["convert", "to-gguf", str(tmp_path / "model"), str(tmp_path / "m.gguf")]) == 0
    messages = [{"role": "user", "content": "Hello there! How are you doing today?"}]
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(tmp_path / "m.gguf"),
                               "--port", str(port), "--n_ctx", "128", "--n_threads", "2", "--verbose", "false"],
                              stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
                time.sleep(0.5)
        body = {"messages": messages, "temperature": 0, "repeat_penalty": 1.0, "max_tokens": 24}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        reply = json.loads(urllib.request.urlopen(request, timeout=120).read())["choices"][0]["message"]["content"]
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    expected = chat_reply(model, tok, messages, max_new_tokens=24, temperature=0)
    assert reply.strip() == expected and expected
