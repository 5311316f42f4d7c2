"""Export to GGUF for llama.cpp (and Ollama, LM Studio, llamafile), as llama.cpp's ``gpt2`` architecture.

A ScratchGPT model is a GPT-2 (see ``convert.to_gpt2``), so the file is written the way llama.cpp's own converter
writes a Hugging Face GPT-2, with the ``gguf`` package (llama.cpp's writer library): tensor names from
``gguf.get_tensor_name_map(MODEL_ARCH.GPT2, n_layer)``, the matrices in nn.Linear's (out, in) layout (the layout
llama.cpp's converter produces by transposing GPT-2's Conv1D), norms and biases in float32, quantisation through
``gguf.quants``. The tokenizer goes in as llama.cpp's byte-level BPE (``tokenizer.ggml.model = "gpt2"``, pre-tokenizer
``"gpt-2"``), with our special tokens as control tokens, ``<|endoftext|>`` as bos/eos and, for chat models, ``<|end|>``
as the end-of-turn token and the chat template, so llama.cpp stops generation at either.

llama.cpp's gpt2 graph always uses the tanh GELU (``gelu_new``); a model trained with the exact ``gelu`` (our default)
differs there by about 1e-3 in its logits.
"""

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from .weight_names import GPT2_NAMES, expand
from .modeling_scratchgpt import ScratchGPTForCausalLM
from ..errors import write_failure
from ..tokenization import plain_chat_template


__all__ = ["GGUF_DTYPES", "to_gguf"]

GGUF_DTYPES = ("f32", "f16", "bf16", "q8_0")
END_OF_TURN = "<|end|>"


def _tokenizer_fields(tokenizer: PreTrainedTokenizerBase) -> dict:
    """Tokens, token types, merges and special ids of a byte-level BPE, as llama.cpp reads them; ``ValueError`` for
    any other kind of tokenizer."""
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    byte_level = pre.get("type") == "ByteLevel" or any(
        p.get("type") == "ByteLevel" for p in pre.get("pretokenizers", []) or [])
    if model.get("type") != "BPE" or not byte_level:
        raise ValueError("llama.cpp's gpt2 tokenizer is a byte-level BPE, and this tokenizer is not one (a "
                         "character tokenizer, for instance): train a BPE tokenizer (`scratchgpt tokenizer train "
                         "--type bpe`) and a model with it, or use the model through transformers")
    vocab = tokenizer.get_vocab()
    tokens = [None] * len(vocab)
    for token, index in vocab.items():
        if index >= len(tokens) or tokens[index] is not None:
            raise ValueError(f"the tokenizer's ids are not 0 .. {len(vocab) - 1} without gaps, as GGUF needs")
        tokens[index] = token
    control = {added.content for added in tokenizer.added_tokens_decoder.values() if added.special}
    types = [gguf.TokenType.CONTROL if token in control else gguf.TokenType.NORMAL for token in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"tokens": tokens, "types": types, "merges": merges}


def _tensors(model: ScratchGPTForCausalLM) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array) of every weight, in llama.cpp's gpt2 naming; a tied head is left out (llama.cpp
    reuses token_embd)."""
    import gguf

    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2, config.n_layer)
    state = model.state_dict()
    tensors = []
    for ours, theirs, _ in expand(GPT2_NAMES, config.n_layer):
        if ours == "lm_head.weight" and config.tie_word_embeddings:
            continue
        name = names.get_name(theirs, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"gguf has no gpt2 tensor name for {theirs}")
        tensors.append((name, state[ours].detach().to(torch.float32).cpu().numpy()))
    return tensors


def _encode(array: np.ndarray, dtype: str):
    """(data, raw GGML type or None) for one tensor: 1-D tensors (norms, biases) stay float32, as llama.cpp's
    converter keeps them; q8_0 needs rows that are a multiple of its block size, otherwise float16."""
    import gguf

    if array.ndim == 1 or dtype == "f32":
        return array, None
    if dtype == "f16":
        return array.astype(np.float16), None
    qtype = gguf.GGMLQuantizationType.BF16 if dtype == "bf16" else gguf.GGMLQuantizationType.Q8_0
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if array.shape[-1] % block:
        return array.astype(np.float16), None
    return gguf.quants.quantize(array, qtype), qtype


def to_gguf(model: ScratchGPTForCausalLM, tokenizer: PreTrainedTokenizerBase, path: str | Path,
            dtype: str = "f32", name: str | None = None, overwrite: bool = False) -> Path:
    """Write ``model`` and ``tokenizer`` as one GGUF file at ``path`` (written beside it, renamed when complete).

    ``dtype``: ``f32``, ``f16``, ``bf16`` or ``q8_0`` for the matrices. ``name`` (``general.name``, which llama.cpp
    and Ollama show) defaults to the base name of the folder the model was loaded from: a published file carries no
    local path. An existing ``path`` is refused (``FileExistsError``) unless ``overwrite``, as the command line does.
    Raises ``ValueError`` (one line) for a tokenizer llama.cpp cannot run, a vocabulary that does not match the
    model, or an unknown ``dtype``; a failed write (a full disk) as the ``OSError`` naming ``path``."""
    import gguf

    if dtype not in GGUF_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(GGUF_DTYPES)}; got {dtype!r}")
    config = model.config
    fields = _tokenizer_fields(tokenizer)
    if len(fields["tokens"]) != config.vocab_size:
        raise ValueError(f"the tokenizer has {len(fields['tokens'])} tokens but the model's vocabulary is "
                         f"{config.vocab_size}")
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (pass overwrite=True to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    try:
        writer = gguf.GGUFWriter(partial, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GPT2])
        writer.add_name(name or Path(getattr(config, "_name_or_path", "") or "scratchgpt").name or "scratchgpt")
        writer.add_context_length(config.n_positions)
        writer.add_embedding_length(config.n_embd)
        writer.add_feed_forward_length(config.n_inner if config.n_inner is not None else 4 * config.n_embd)
        writer.add_block_count(config.n_layer)
        writer.add_head_count(config.n_head)
        writer.add_layer_norm_eps(config.layer_norm_epsilon)
        writer.add_file_type(file_type)

        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("gpt-2")
        writer.add_token_list(fields["tokens"])
        writer.add_token_types(fields["types"])
        writer.add_token_merges(fields["merges"])
        eos = tokenizer.eos_token_id
        if eos is not None:
            writer.add_eos_token_id(eos)
            writer.add_bos_token_id(tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos)
        if tokenizer.pad_token_id is not None:
            writer.add_pad_token_id(tokenizer.pad_token_id)
        writer.add_add_bos_token(False)  # our models are trained without a leading bos
        vocab = tokenizer.get_vocab()
        if tokenizer.chat_template:
            # without {% generation %} tags: same text, and jinja engines other than transformers' reject the tag
            writer.add_chat_template(plain_chat_template(tokenizer.chat_template))
            if END_OF_TURN in vocab:
                writer.add_eot_token_id(vocab[END_OF_TURN])  # llama.cpp ends generation at eos and eot

        for name, array in _tensors(model):
            data, raw_dtype = _encode(array, dtype)
            writer.add_tensor(name, data, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(partial, path)
    except BaseException as error:
        Path(partial).unlink(missing_ok=True)
        failed = write_failure(error, filename=path)
        if failed is not None and failed is not error:  # numpy's "N requested and M written" for a full disk
            raise failed from error
        raise
    return path
