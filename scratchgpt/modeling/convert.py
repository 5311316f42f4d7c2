"""Exact weight conversions: ScratchGPT <-> transformers' GPT-2, and import of the original project's checkpoints.

Both conversions are a renaming of state-dict keys (plus a transpose for the matrices GPT-2 keeps in its
``Conv1D`` layout, [in, out] instead of nn.Linear's [out, in]); one table per foreign format says which name
becomes which.
"""

import json
import pickle
from pathlib import Path

import torch
from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from ..tokenization import generation_eos_token_ids, load_legacy_tokenizer

from .configuration_scratchgpt import ScratchGPTConfig
from .modeling_scratchgpt import ScratchGPTForCausalLM
from .weight_names import GPT2_NAMES, expand


__all__ = ["to_gpt2", "to_gguf", "from_gpt2", "load_legacy_checkpoint", "legacy_config", "convert_legacy_checkpoint"]


# (ScratchGPT name, legacy name); the original project used nn.Linear throughout, so nothing is transposed.
_LEGACY_NAMES = [
    ("model.wte.weight", "token_embedding.weight"),
    ("model.wpe.weight", "positional_embedding.weight"),
    ("model.layers.{i}.ln_1.weight", "blocks.{i}.norm1.weight"),
    ("model.layers.{i}.ln_1.bias", "blocks.{i}.norm1.bias"),
    ("model.layers.{i}.attn.qkv.weight", "blocks.{i}.attention.qkv.weight"),
    ("model.layers.{i}.attn.qkv.bias", "blocks.{i}.attention.qkv.bias"),
    ("model.layers.{i}.attn.out_proj.weight", "blocks.{i}.attention.out_proj.weight"),
    ("model.layers.{i}.attn.out_proj.bias", "blocks.{i}.attention.out_proj.bias"),
    ("model.layers.{i}.ln_2.weight", "blocks.{i}.norm2.weight"),
    ("model.layers.{i}.ln_2.bias", "blocks.{i}.norm2.bias"),
    ("model.layers.{i}.mlp.fc_in.weight", "blocks.{i}.feed_forward.fc1.weight"),
    ("model.layers.{i}.mlp.fc_in.bias", "blocks.{i}.feed_forward.fc1.bias"),
    ("model.layers.{i}.mlp.fc_out.weight", "blocks.{i}.feed_forward.fc2.weight"),
    ("model.layers.{i}.mlp.fc_out.bias", "blocks.{i}.feed_forward.fc2.bias"),
    ("model.ln_f.weight", "ln_f.weight"),
    ("model.ln_f.bias", "ln_f.bias"),
    ("lm_head.weight", "head.weight"),
]


def _shared_config_fields(config) -> dict:
    """The fields that mean the same thing in ScratchGPTConfig and GPT2Config."""
    names = ["vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "activation_function", "resid_pdrop",
             "embd_pdrop", "attn_pdrop", "layer_norm_epsilon", "initializer_range", "bos_token_id",
             "eos_token_id", "pad_token_id", "tie_word_embeddings", "use_cache"]
    fields = {name: getattr(config, name) for name in names}
    fields["n_inner"] = config.n_inner if config.n_inner is not None else 4 * config.n_embd
    return fields


@torch.no_grad()
def _transfer(source, target, names: list[tuple[str, str, bool]]):
    """Copy ``source``'s weights into ``target`` by (source name, target name, transpose) rows, with its device,
    dtype, attention implementation, generation config and train/eval mode."""
    state = source.state_dict()
    target.load_state_dict({dst: state[src].t() if transposed else state[src] for src, dst, transposed in names})
    target.set_attn_implementation(source.config._attn_implementation)
    target.generation_config = source.generation_config
    return target.to(device=source.device, dtype=source.dtype).train(source.training)


def to_gpt2(model: ScratchGPTForCausalLM) -> GPT2LMHeadModel:
    """An equivalent transformers ``GPT2LMHeadModel`` (same logits), loadable anywhere without remote code."""
    gpt2 = GPT2LMHeadModel(GPT2Config(**_shared_config_fields(model.config)))
    return _transfer(model, gpt2, expand(GPT2_NAMES, model.config.n_layer))


def to_gguf(model: ScratchGPTForCausalLM, tokenizer: PreTrainedTokenizerFast, path: str | Path,
            dtype: str = "f32", name: str | None = None, overwrite: bool = False) -> Path:
    """A GGUF file for llama.cpp's gpt2 architecture (see ``gguf_export``); needs the ``gguf`` package
    (``pip install -e ".[gguf]"``)."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ImportError('GGUF export needs the gguf package: pip install -e ".[gguf]"') from None
    from .gguf_export import to_gguf as write_gguf

    return write_gguf(model, tokenizer, path, dtype, name, overwrite)


def from_gpt2(gpt2: GPT2LMHeadModel) -> ScratchGPTForCausalLM:
    """An equivalent ``ScratchGPTForCausalLM`` from a transformers GPT-2 (e.g. stock ``openai-community/gpt2``)."""
    unsupported = {
        "add_cross_attention": gpt2.config.add_cross_attention,
        "scale_attn_by_inverse_layer_idx": gpt2.config.scale_attn_by_inverse_layer_idx,
        "scale_attn_weights=False": not gpt2.config.scale_attn_weights,
    }
    if any(unsupported.values()):
        used = ", ".join(name for name, on in unsupported.items() if on)
        raise ValueError(f"GPT-2 model uses {used}, which ScratchGPT does not implement")
    model = ScratchGPTForCausalLM(ScratchGPTConfig(**_shared_config_fields(gpt2.config)))
    return _transfer(gpt2, model, [(theirs, ours, t) for ours, theirs, t in expand(GPT2_NAMES, gpt2.config.n_layer)])


def legacy_config(legacy: dict) -> ScratchGPTConfig:
    """Translate an original-project ``config.json`` (embed_dim, num_heads, ...) into a ScratchGPTConfig."""
    required = ["vocab_size", "embed_dim", "num_heads", "num_layers", "ff_dim", "max_seq_len"]
    missing = [name for name in required if name not in legacy]
    if missing:
        raise ValueError(f"legacy config.json lacks {', '.join(missing)}")
    dropout = legacy.get("dropout", 0.1)
    return ScratchGPTConfig(
        vocab_size=legacy["vocab_size"],
        n_embd=legacy["embed_dim"],
        n_head=legacy["num_heads"],
        n_layer=legacy["num_layers"],
        n_inner=legacy["ff_dim"],
        n_positions=legacy["max_seq_len"],
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        activation_function="gelu",  # exact erf GELU, eps 1e-5: the original's nn.GELU / nn.LayerNorm defaults
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=False,
    )


def _describe(names, limit: int = 5) -> str:
    names = sorted(names)
    more = f" (and {len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def load_legacy_checkpoint(path: str | Path) -> ScratchGPTForCausalLM:
    """Load a checkpoint folder of the original from-scratch project (``config.json`` + ``pytorch_model.bin``).

    Keys saved from a ``torch.compile``d model (prefix ``_orig_mod.``) are accepted and the ``causal_mask``
    buffers ignored. Raises ``ValueError`` naming any missing or unexpected key, any shape mismatch, or a parameter
    count that disagrees with the config's ``total_parameters``.
    """
    folder = Path(path)
    for name in ("config.json", "pytorch_model.bin"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name}: not found (a legacy checkpoint folder holds config.json and "
                                    f"pytorch_model.bin)")
    try:
        legacy = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except ValueError as error:
        raise ValueError(f"{folder / 'config.json'}: not valid JSON ({error})") from None
    config = legacy_config(legacy)
    # weights_only: a checkpoint is data; never unpickle arbitrary objects from it
    weights = folder / "pytorch_model.bin"
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(f"{weights}: holds Python objects besides tensors, which are never unpickled "
                         f"(weights_only), so it cannot be imported") from None
    except Exception as error:  # a truncated zip archive or garbage bytes
        raise ValueError(f"{weights}: not a readable PyTorch state dict ({str(error).splitlines()[0][:200]}); it "
                         f"may be truncated") from None
    if not isinstance(state, dict):
        raise ValueError(f"{folder / 'pytorch_model.bin'}: holds a {type(state).__name__}, not a state dict")
    state = {k.removeprefix("_orig_mod."): v for k, v in state.items() if not k.endswith("causal_mask")}

    rows = expand(_LEGACY_NAMES, config.n_layer)
    expected = {legacy_name for _, legacy_name in rows}
    missing, unexpected = expected - state.keys(), state.keys() - expected
    if missing or unexpected:
        problems = ([f"missing keys: {_describe(missing)}"] if missing else []) + (
            [f"unexpected keys: {_describe(unexpected)}"] if unexpected else [])
        raise ValueError(f"{folder / 'pytorch_model.bin'} does not match its config.json: {'; '.join(problems)}")

    model = ScratchGPTForCausalLM(config)
    target_shapes = {name: tensor.shape for name, tensor in model.state_dict().items()}
    mismatched = [f"{legacy_name} {tuple(state[legacy_name].shape)} (expected {tuple(target_shapes[name])})"
                  for name, legacy_name in rows if state[legacy_name].shape != target_shapes[name]]
    if mismatched:
        raise ValueError(f"{folder / 'pytorch_model.bin'}: shape mismatch: {_describe(mismatched)}")
    model.load_state_dict({name: state[legacy_name] for name, legacy_name in rows})

    expected_count = legacy.get("total_parameters")
    if expected_count is not None and model.num_parameters() != expected_count:
        raise ValueError(f"{folder / 'config.json'}: total_parameters is {expected_count:,} but the weights give "
                         f"{model.num_parameters():,}")
    return model.eval()


def convert_legacy_checkpoint(path: str | Path) -> tuple[ScratchGPTForCausalLM, PreTrainedTokenizerFast]:
    """A legacy checkpoint folder as a model and tokenizer ready for ``save_pretrained``: the special token ids
    and the generation config (stop at ``<|endoftext|>``) come from the legacy tokenizer beside the weights."""
    model = load_legacy_checkpoint(path)
    tokenizer = load_legacy_tokenizer(path)
    if len(tokenizer) != model.config.vocab_size:
        raise ValueError(f"{path}: tokenizer.json has {len(tokenizer)} tokens but config.json says vocab_size "
                         f"{model.config.vocab_size}")
    tokenizer.model_max_length = model.config.n_positions
    model.config.bos_token_id = tokenizer.bos_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config = GenerationConfig.from_model_config(model.config)
    model.generation_config.eos_token_id = generation_eos_token_ids(tokenizer) or None
    return model, tokenizer
