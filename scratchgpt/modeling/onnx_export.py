"""Export to ONNX for transformers.js (in the browser and in node) and ONNX Runtime, as a GPT-2 folder.

transformers.js runs the models it knows by their config's ``model_type`` from ``onnx/model.onnx``. A ScratchGPT
model is a GPT-2 (see ``convert.to_gpt2``), so the folder is the GPT-2 export (``config.json``, from which
transformers.js reads ``n_layer``, ``n_head`` and ``n_embd`` to build the cache; the weights, so that transformers
loads the same folder; the generation config; the tokenizer files, with the chat template also in
``tokenizer_config.json``, where transformers.js reads it, see ``tokenization.portable``) plus one decoder graph,
with the input and output names that transformers.js and optimum's exports use:

    input_ids (B, T), attention_mask (B, P+T), position_ids (B, T),
    past_key_values.{i}.key / .value (B, H, P, D/H)  ->  logits (B, T, V), present.{i}.key / .value (B, H, P+T, D/H)

The graph is our own forward, captured by torch.onnx's exporter (torch.export, ``dynamo=True``) with eager attention
(an explicit mask, so left padding works). transformers.js starts generation with a past of length 0, sized from the
graph's input shapes (named dimensions become 0, numbers stay): the batch and the lengths are dynamic and named, heads
and head width are numbers. The example batch has every dynamic size above 1, so none is specialised.
"""

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedTokenizerBase

from ..tokenization import save_tokenizer
from .convert import to_gpt2
from .modeling_scratchgpt import CACHE_NAME, ScratchGPTForCausalLM


__all__ = ["ONNX_FILE", "to_onnx"]

ONNX_FILE = "onnx/model.onnx"
OPSET = 18  # the exporter's own opset; ONNX Runtime 1.14 and later run it (transformers.js 4.3 ships 1.30)


class _Decoder(nn.Module):
    """The model as a function of flat tensors: the past as 2 * n_layer (key, value) tensors in, the present out."""

    def __init__(self, model: ScratchGPTForCausalLM):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, *past):
        cache = DynamicCache(config=self.model.config)
        for layer in range(len(past) // 2):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=True, **{CACHE_NAME: cache})
        present = getattr(out, CACHE_NAME)
        return (out.logits, *(tensor for layer in present.layers for tensor in (layer.keys, layer.values)))


def _names(n_layer: int, prefix: str) -> list[str]:
    return [f"{prefix}.{layer}.{kind}" for layer in range(n_layer) for kind in ("key", "value")]


@torch.no_grad()
def _export_graph(model: ScratchGPTForCausalLM, path: Path) -> None:
    config = model.config
    heads, head_width = config.n_head, config.n_embd // config.n_head
    past_names, present_names = _names(config.n_layer, "past_key_values"), _names(config.n_layer, "present")
    # a small example batch; every length below is a dynamic axis
    batch, new, cached = 2, 3, 2
    example = (torch.zeros(batch, new, dtype=torch.long), torch.ones(batch, cached + new, dtype=torch.long),
               torch.arange(cached, cached + new).repeat(batch, 1),
               *(torch.zeros(batch, heads, cached, head_width) for _ in past_names))
    batch_size, sequence, past, total = (torch.export.Dim(name) for name in (
        "batch_size", "sequence_length", "past_sequence_length", "total_sequence_length"))
    shapes = ({0: batch_size, 1: sequence}, {0: batch_size, 1: total}, {0: batch_size, 1: sequence},
              tuple({0: batch_size, 2: past} for _ in past_names))
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping torchvision::nms" and the like
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # the exporter's progress lines
            warnings.simplefilter("ignore")  # its notes on how it names dimensions and on its own internals
            torch.onnx.export(_Decoder(model), example, str(path), input_names=["input_ids", "attention_mask",
                              "position_ids", *past_names], output_names=["logits", *present_names],
                              dynamic_shapes=shapes, opset_version=OPSET, dynamo=True, external_data=False)
    finally:
        exporter_log.setLevel(level)


def to_onnx(model: ScratchGPTForCausalLM, tokenizer: PreTrainedTokenizerBase, folder: str | Path) -> Path:
    """Write the export (see the module docstring) into ``folder`` and return it; callers that must not leave a
    half-written folder pass a staging one (``staging.staged_output``). Needs the ``onnx`` and ``onnxscript``
    packages (``pip install -e ".[onnx]"``). The graph is float32 (``model`` is left in float32), the precision
    transformers.js is told to load (``transformers.js_config.dtype``), in the browser too, where it would otherwise
    ask for an 8-bit file."""
    folder = Path(folder)
    model = model.float().eval()
    attention = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        gpt2 = to_gpt2(model)
        (folder / ONNX_FILE).parent.mkdir(parents=True, exist_ok=True)
        _export_graph(model, folder / ONNX_FILE)
    finally:
        model.set_attn_implementation(attention)
    gpt2.save_pretrained(folder)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["transformers.js_config"] = {"dtype": "fp32"}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    save_tokenizer(tokenizer, folder)
    return folder
