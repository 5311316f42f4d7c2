"""ScratchGPT configuration.

This file is copied next to the weights by ``save_pretrained`` (``trust_remote_code`` users load it without
scratchgpt installed), so it imports nothing but ``transformers``.
"""

from transformers import PreTrainedConfig
from transformers.activations import ACT2FN


__all__ = ["ScratchGPTConfig", "PRESETS"]


# Named model sizes of the original from-scratch project. The vocabulary size comes from the tokenizer.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"n_layer": 2, "n_embd": 128, "n_head": 4, "n_inner": 512, "n_positions": 128},
    "small": {"n_layer": 4, "n_embd": 256, "n_head": 4, "n_inner": 1024, "n_positions": 256},
    "medium": {"n_layer": 6, "n_embd": 384, "n_head": 6, "n_inner": 1536, "n_positions": 512},
    "large": {"n_layer": 8, "n_embd": 512, "n_head": 8, "n_inner": 2048, "n_positions": 512},
    "xlarge": {"n_layer": 10, "n_embd": 768, "n_head": 12, "n_inner": 3072, "n_positions": 512},
    "gpt2_small": {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_inner": 3072, "n_positions": 512},
}


class ScratchGPTConfig(PreTrainedConfig):
    r"""
    Configuration of a ScratchGPT model: a GPT-2 style decoder (learned token and position embeddings, pre-LayerNorm
    blocks with fused-qkv causal self-attention and a GELU MLP, final LayerNorm, LM head).

    Field names follow GPT-2 (``n_embd``, ``n_layer``, ``n_head``, ``n_inner``, ``n_positions``); the standard names
    ``hidden_size``, ``num_hidden_layers``, ``num_attention_heads`` and ``max_position_embeddings`` are aliases.

    Args:
        vocab_size: number of token ids.
        n_positions: longest sequence the model accepts (learned position embeddings).
        n_embd: hidden size.
        n_layer: number of transformer blocks.
        n_head: attention heads; must divide ``n_embd``.
        n_inner: MLP width; ``None`` means ``4 * n_embd``.
        activation_function: MLP activation, a key of ``transformers.activations.ACT2FN``. ``"gelu"`` (exact, erf)
            is the original project's; ``"gelu_new"`` (tanh approximation) is what stock GPT-2 weights need.
        resid_pdrop, embd_pdrop, attn_pdrop: dropout after residual projections, after the embeddings, and on
            attention probabilities.
        layer_norm_epsilon: LayerNorm epsilon.
        initializer_range: standard deviation of the normal initialisation.
        use_cache: whether ``forward`` returns a KV cache by default.
        tie_word_embeddings: share the LM head with the token embedding (GPT-2 does; the original project did not).
        bos_token_id, eos_token_id, pad_token_id: special token ids, usually set from the tokenizer.

    Example:

    ```python
    >>> from scratchgpt import ScratchGPTConfig, ScratchGPTForCausalLM
    >>> config = ScratchGPTConfig.from_preset("tiny", vocab_size=1000)
    >>> config.hidden_size, config.num_hidden_layers
    (128, 2)
    >>> model = ScratchGPTForCausalLM(config)
    ```
    """

    model_type = "scratchgpt"
    keys_to_ignore_at_inference = ["cache"]
    attribute_map = {
        "hidden_size": "n_embd",
        "num_hidden_layers": "n_layer",
        "num_attention_heads": "n_head",
        "intermediate_size": "n_inner",
        "max_position_embeddings": "n_positions",
    }

    vocab_size: int = 32000
    n_positions: int = 512
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu"
    resid_pdrop: float | int = 0.1
    embd_pdrop: float | int = 0.1
    attn_pdrop: float | int = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    use_cache: bool = True
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.n_inner is None:
            self.n_inner = 4 * self.n_embd
        self.validate_architecture()

    def validate_architecture(self):
        """Raise ``ValueError`` naming the field when the sizes cannot build a model."""
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ScratchGPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"ScratchGPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"ScratchGPTConfig.{name} must be in [0, 1), got {value!r}")
        if self.activation_function not in ACT2FN:
            raise ValueError(
                f"ScratchGPTConfig.activation_function {self.activation_function!r} is unknown; "
                f"use 'gelu' (exact) or 'gelu_new' (tanh, stock GPT-2)"
            )

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "ScratchGPTConfig":
        """Build the config of a named size (see ``PRESETS``); keyword arguments override any field.

        >>> ScratchGPTConfig.from_preset("gpt2_small", vocab_size=32000).n_layer
        12
        """
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})
