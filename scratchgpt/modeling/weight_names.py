"""Which ScratchGPT weight is which weight of another format: the tables ``convert`` (GPT-2 in transformers) and
``gguf_export`` (llama.cpp's gpt2 tensors, named after GPT-2's) both read."""


__all__ = ["GPT2_NAMES", "expand"]


# (ScratchGPT name, GPT-2 name, stored transposed by GPT-2's Conv1D); {i} is the layer index.
GPT2_NAMES = [
    ("model.wte.weight", "transformer.wte.weight", False),
    ("model.wpe.weight", "transformer.wpe.weight", False),
    ("model.layers.{i}.ln_1.weight", "transformer.h.{i}.ln_1.weight", False),
    ("model.layers.{i}.ln_1.bias", "transformer.h.{i}.ln_1.bias", False),
    ("model.layers.{i}.attn.qkv.weight", "transformer.h.{i}.attn.c_attn.weight", True),
    ("model.layers.{i}.attn.qkv.bias", "transformer.h.{i}.attn.c_attn.bias", False),
    ("model.layers.{i}.attn.out_proj.weight", "transformer.h.{i}.attn.c_proj.weight", True),
    ("model.layers.{i}.attn.out_proj.bias", "transformer.h.{i}.attn.c_proj.bias", False),
    ("model.layers.{i}.ln_2.weight", "transformer.h.{i}.ln_2.weight", False),
    ("model.layers.{i}.ln_2.bias", "transformer.h.{i}.ln_2.bias", False),
    ("model.layers.{i}.mlp.fc_in.weight", "transformer.h.{i}.mlp.c_fc.weight", True),
    ("model.layers.{i}.mlp.fc_in.bias", "transformer.h.{i}.mlp.c_fc.bias", False),
    ("model.layers.{i}.mlp.fc_out.weight", "transformer.h.{i}.mlp.c_proj.weight", True),
    ("model.layers.{i}.mlp.fc_out.bias", "transformer.h.{i}.mlp.c_proj.bias", False),
    ("model.ln_f.weight", "transformer.ln_f.weight", False),
    ("model.ln_f.bias", "transformer.ln_f.bias", False),
    ("lm_head.weight", "lm_head.weight", False),
]


def expand(table: list[tuple], n_layer: int) -> list[tuple]:
    """Instantiate the per-layer rows of a name table for layers 0 .. n_layer-1."""
    rows = []
    for row in table:
        if "{i}" in row[0]:
            rows.extend(tuple(c.format(i=i) if isinstance(c, str) else c for c in row) for i in range(n_layer))
        else:
            rows.append(row)
    return rows
