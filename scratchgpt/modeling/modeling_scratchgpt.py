"""ScratchGPT: a GPT-2 style decoder-only language model as a native ``transformers`` model.

Reading order, smallest piece first: eager attention, CausalSelfAttention, MLP, Block, the PreTrainedModel
declarations, the bare model, the model with its LM head. The training loss, computed chunk by chunk from the last
hidden states, lives beside this file in ``loss_scratchgpt.py``.

Shapes: B batch, T new tokens in this call, S = past + T key/value positions, D hidden size, nh heads,
hs = D / nh head size, V vocabulary.

This file is copied next to the weights by ``save_pretrained`` (``trust_remote_code`` users load it without
scratchgpt installed), so it imports nothing but torch, transformers and the two modules beside it (transformers
copies those along).
"""

import inspect
import math
from collections.abc import Callable

import torch
from torch import nn

from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel

from .configuration_scratchgpt import ScratchGPTConfig
from .loss_scratchgpt import chunked_causal_lm_loss


__all__ = ["ScratchGPTPreTrainedModel", "ScratchGPTModel", "ScratchGPTForCausalLM"]

# transformers 5.24 calls the key/value cache `cache` (generate's argument, create_causal_mask's, the output fields);
# earlier 5.x releases call it `past_key_values`. This file runs wherever it is loaded with trust_remote_code, on
# either: it takes both names and speaks to the library in the one it knows.
CACHE_NAME = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,  # (B, nh, T, hs)
    key: torch.Tensor,  # (B, nh, S, hs)
    value: torch.Tensor,  # (B, nh, S, hs)
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention; returns the output (B, T, nh, hs) and the probabilities (B, nh, T, S).

    The mask may come in any form ``create_causal_mask`` builds: additive float (eager), boolean "may attend"
    (sdpa) or ``None`` for a plain causal mask (sdpa's fast path), because this function also serves
    ``output_attentions=True`` under sdpa.
    """
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling  # (B, nh, T, S)
    if attention_mask is None:
        t, s = scores.shape[-2:]
        # the T queries are the last T of the S positions
        attention_mask = torch.ones(t, s, dtype=torch.bool, device=scores.device).tril(s - t)
    if attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    else:
        scores = scores + attention_mask[..., : key.shape[-2]]
    probs = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    output = torch.matmul(probs, value).transpose(1, 2).contiguous()  # (B, T, nh, hs)
    return output, probs


class ScratchGPTAttention(nn.Module):
    """Multi-head causal self-attention with one fused qkv projection.

    The qkv output rows are ordered q, k, v, each head-major: the layout of GPT-2 and of the original project.
    """

    def __init__(self, config: ScratchGPTConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.scaling = self.head_dim**-0.5
        self.is_causal = True  # read by the sdpa and flash-attention kernels
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.out_proj = nn.Linear(config.n_embd, config.n_embd)
        self.out_proj.is_residual_projection = True  # read by _init_weights
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, T, D)
        attention_mask: torch.Tensor | None,
        cache: Cache | None = None,
        output_attentions: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, seq_len, _ = hidden_states.shape
        qkv = self.qkv(hidden_states).view(batch, seq_len, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)  # each (B, nh, T, hs)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)  # each (B, nh, S, hs)

        # sdpa never returns probabilities, so a call that asks for them runs eager
        implementation = "eager" if output_attentions else self.config._attn_implementation
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        output, weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.config.attn_pdrop if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        output = self.out_proj(output.reshape(batch, seq_len, -1))  # (B, T, D)
        return self.resid_dropout(output), weights


class ScratchGPTMLP(nn.Module):
    def __init__(self, config: ScratchGPTConfig):
        super().__init__()
        self.fc_in = nn.Linear(config.n_embd, config.n_inner)
        self.act = ACT2FN[config.activation_function]
        self.fc_out = nn.Linear(config.n_inner, config.n_embd)
        self.fc_out.is_residual_projection = True  # read by _init_weights
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc_out(self.act(self.fc_in(hidden_states))))


class ScratchGPTBlock(GradientCheckpointingLayer):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: ScratchGPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = ScratchGPTAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = ScratchGPTMLP(config)

    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, T, D)
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        output_attentions: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn_output, attn_weights = self.attn(
            self.ln_1(hidden_states), attention_mask, cache=cache, output_attentions=output_attentions, **kwargs
        )
        hidden_states = hidden_states + attn_output
        hidden_states = hidden_states + self.mlp(self.ln_2(hidden_states))
        return hidden_states, attn_weights


class ScratchGPTPreTrainedModel(PreTrainedModel):
    config_class = ScratchGPTConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ScratchGPTBlock"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True

    def _init_weights(self, module):
        # Linear and Embedding ~ N(0, initializer_range), biases 0, LayerNorm 1/0 (the library's default) ...
        super()._init_weights(module)
        # ... except the projections that write into the residual stream, scaled by 1/sqrt(2 * n_layer) so the
        # residual's variance does not grow with depth (GPT-2 paper, section 2.3). They are marked on the Linear
        # itself: for custom code, transformers only visits modules that own parameters directly.
        if getattr(module, "is_residual_projection", False):
            std = self.config.initializer_range / math.sqrt(2 * self.config.n_layer)
            init.normal_(module.weight, mean=0.0, std=std)


class ScratchGPTModel(ScratchGPTPreTrainedModel):
    """Embeddings and transformer blocks; returns the final (LayerNormed) hidden states."""

    def __init__(self, config: ScratchGPTConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.layers = nn.ModuleList([ScratchGPTBlock(config, layer_idx=i) for i in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def set_input_embeddings(self, new_embeddings: nn.Embedding):
        self.wte = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, S): 1 for real tokens, 0 for padding
        position_ids: torch.LongTensor | None = None,  # (B, T)
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,  # (B, T, D)
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        past_key_values: Cache | None = None,  # the older name of `cache` (transformers < 5.24)
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        use_cache = self.config.use_cache if use_cache is None else use_cache
        cache = cache if cache is not None else past_key_values
        if self.training and cache is None:
            # no cache in training: it is never read there, checkpointing's recomputation would append to it twice,
            # and a cache makes create_causal_mask ignore the per-sequence positions of packed batches
            use_cache = False
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)

        if inputs_embeds is None:
            inputs_embeds = self.wte(input_ids)
        seq_len = inputs_embeds.shape[1]
        past_len = cache.get_seq_length() if cache is not None else 0
        if past_len + seq_len > self.config.n_positions:
            # only a packed row (TRL's padding-free batches: several sequences in one row, position_ids restarting
            # at 0 for each) may be longer than the context, if its longest sequence fits: TRL says how long that
            # is (max_length_q); otherwise the positions do (one device sync, on this rare path only)
            longest = kwargs.get("max_length_q")
            if longest is None and position_ids is not None:
                # under torch.compile (vLLM packs every request into one row) the positions cannot be read
                # without a graph break: the position-embedding lookup bounds them instead
                longest = 0 if torch.compiler.is_compiling() else int(position_ids.max()) + 1 - past_len
            longest = seq_len if longest is None else longest
            if past_len + longest > self.config.n_positions:
                raise ValueError(
                    f"sequence of {past_len + longest} tokens ({past_len} cached + {longest} new) is longer than "
                    f"the model's context of n_positions={self.config.n_positions}"
                )
        if position_ids is None:
            position_ids = self._position_ids(attention_mask, past_len, seq_len, inputs_embeds.device)

        hidden_states = self.drop(inputs_embeds + self.wpe(position_ids))  # (B, T, D)
        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **{CACHE_NAME: cache},
        )

        all_hidden_states = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for block in self.layers:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            # position_ids reach the attention function: flash attention's varlen path finds packed sequences there
            hidden_states, attn_weights = block(
                hidden_states, mask, cache=cache, output_attentions=output_attentions, position_ids=position_ids,
                **kwargs,
            )
            if output_attentions:
                all_attentions += (attn_weights,)
        hidden_states = self.ln_f(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)

        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
            **{CACHE_NAME: cache if use_cache else None},
        )

    @staticmethod
    def _position_ids(
        attention_mask: torch.Tensor | None, past_len: int, seq_len: int, device: torch.device
    ) -> torch.LongTensor:
        """Positions of the T new tokens, (B or 1, T). With a 2D padding mask over all S positions, each row counts
        only its real tokens, so a left-padded prompt gets the same positions as the unpadded one."""
        if attention_mask is not None and attention_mask.dim() == 2:
            positions = attention_mask.long().cumsum(-1) - 1  # (B, S)
            return positions[:, -seq_len:].clamp(min=0)
        return torch.arange(past_len, past_len + seq_len, device=device).unsqueeze(0)


class ScratchGPTForCausalLM(ScratchGPTPreTrainedModel, GenerationMixin):
    """ScratchGPT with a language-modelling head (untied by default; tied when ``config.tie_word_embeddings``)."""

    _tied_weights_keys = {"lm_head.weight": "model.wte.weight"}

    def __init__(self, config: ScratchGPTConfig):
        super().__init__(config)
        self.model = ScratchGPTModel(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, S)
        position_ids: torch.LongTensor | None = None,  # (B, T)
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,  # (B, T, D)
        labels: torch.LongTensor | None = None,  # (B, T), unshifted; -100 is ignored
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        skip_logits: bool | None = None,
        past_key_values: Cache | None = None,  # the older name of `cache` (transformers < 5.24)
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits (B, T, V) and, with ``labels``, the mean next-token cross-entropy (the labels are shifted here).

        ``logits_to_keep=k`` computes logits for the last k positions only (generation needs just the last one);
        0 keeps all. Extra keyword arguments (e.g. the Trainer's ``num_items_in_batch``) reach the loss.

        ``skip_logits=True`` returns the loss only (``logits`` is ``None``), computed chunk by chunk from the hidden
        states so the (B, T, V) logits never exist: less memory and less time. The default, ``None``, skips them
        exactly when they are not looked at in training: in training mode with labels (as Liger-Kernel's fused
        forward does). In eval mode, or with ``skip_logits=False``, the logits are returned as usual; so they are
        when ``lm_head`` is no longer a plain ``nn.Linear`` (wrapped by an adapter, quantised).
        """
        has_labels = labels is not None or kwargs.get("shift_labels") is not None
        if skip_logits is None:
            skip_logits = self.training and has_labels
        if skip_logits and not has_labels:
            raise ValueError("skip_logits=True computes only the loss, so it needs labels")
        outputs = self.model(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache if cache is not None else past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        logits = loss = None
        # the chunked loss reads the head's weight directly, so only a plain Linear head whose weight is whole may
        # take that path; a replaced or wrapped head (adapters, quantisation, an FSDP unit of its own, whose class
        # FSDP changes), or a weight that DeepSpeed ZeRO-3 gathers only inside the head's forward, runs that forward
        if skip_logits and type(self.lm_head) is nn.Linear and not is_deepspeed_zero3_enabled():
            loss = chunked_causal_lm_loss(hidden_states, self.lm_head.weight, labels, **kwargs)
        else:
            keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            logits = self.lm_head(hidden_states[:, keep, :])  # (B, T or k, V)
            if has_labels:
                loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **kwargs)

        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
        )

    def save_pretrained(self, save_directory, *args, **kwargs):
        # vLLM's transformers backend builds the bare model through AutoModel: name it beside AutoModelForCausalLM
        if getattr(self, "_auto_class", None) is not None:
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}),
                                    "AutoModel": f"{type(self.model).__module__.split('.')[-1]}.ScratchGPTModel"}
        return super().save_pretrained(save_directory, *args, **kwargs)
