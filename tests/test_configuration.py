import json

import pytest
import torch
from transformers import AutoConfig

from scratchgpt import PRESETS, ScratchGPTConfig, ScratchGPTForCausalLM
from scratchgpt.modeling.convert import legacy_config

from .testing_utils import FIXTURES


def count_parameters(config: ScratchGPTConfig) -> int:
    with torch.device("meta"):  # shapes only: no memory, no init time
        return ScratchGPTForCausalLM(config).num_parameters()


def test_gpt2_small_preset_has_the_original_parameter_count():
    config = ScratchGPTConfig.from_preset("gpt2_small", vocab_size=32000)
    assert (config.n_layer, config.n_embd, config.n_head, config.n_inner, config.n_positions) == (12, 768, 12, 3072, 512)
    assert count_parameters(config) == 134_601_216


def test_tied_preset_counts_the_head_once():
    untied = count_parameters(ScratchGPTConfig.from_preset("gpt2_small", vocab_size=32000))
    tied = count_parameters(ScratchGPTConfig.from_preset("gpt2_small", vocab_size=32000, tie_word_embeddings=True))
    assert untied - tied == 32000 * 768


@pytest.mark.parametrize("folder", ["checkpoint_tiny", "checkpoint_medium", "checkpoint_gpt2_small"])
def test_legacy_configs_give_their_total_parameters(folder):
    legacy = json.loads((FIXTURES / "legacy" / folder / "config.json").read_text())
    assert count_parameters(legacy_config(legacy)) == legacy["total_parameters"]


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_build_and_override(name):
    config = ScratchGPTConfig.from_preset(name, vocab_size=500, n_positions=64)
    assert config.n_layer == PRESETS[name]["n_layer"]
    assert config.vocab_size == 500 and config.n_positions == 64


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown preset 'huge'.*tiny, small, medium, large, xlarge, gpt2_small"):
        ScratchGPTConfig.from_preset("huge")


def test_standard_names_are_aliases():
    config = ScratchGPTConfig(hidden_size=64, num_attention_heads=8, num_hidden_layers=3, max_position_embeddings=99)
    assert (config.n_embd, config.n_head, config.n_layer, config.n_positions) == (64, 8, 3, 99)
    assert config.n_inner == 4 * 64  # derived when not given
    assert config.hidden_size == 64 and config.intermediate_size == 256


def test_defaults_follow_the_original_project():
    config = ScratchGPTConfig()
    assert config.tie_word_embeddings is False
    assert config.activation_function == "gelu"
    assert config.layer_norm_epsilon == 1e-5


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(n_embd=100, n_head=3), r"n_embd \(100\) must be divisible by n_head \(3\)"),
        (dict(n_layer=0), "n_layer must be a positive integer, got 0"),
        (dict(vocab_size=-5), "vocab_size must be a positive integer, got -5"),
        (dict(n_positions=1.5), "n_positions must be a positive integer, got 1.5"),
        (dict(n_inner=0), "n_inner must be a positive integer"),
        (dict(attn_pdrop=1.0), r"attn_pdrop must be in \[0, 1\)"),
        (dict(activation_function="swishy"), "activation_function 'swishy' is unknown"),
    ],
)
def test_bad_configs_are_rejected_with_the_field_named(fields, message):
    with pytest.raises(ValueError, match=message):
        ScratchGPTConfig(**fields)


def test_older_config_json_with_missing_and_extra_fields_loads(tmp_path):
    # an early config: no dropout, epsilon or token fields, plus a field that no longer exists
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "scratchgpt", "vocab_size": 1000, "n_embd": 64, "n_head": 4, "n_layer": 2,
         "n_positions": 128, "rotary_something": True}))
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, ScratchGPTConfig)
    assert (config.vocab_size, config.n_embd, config.n_inner) == (1000, 64, 256)
    assert config.resid_pdrop == 0.1 and config.tie_word_embeddings is False
    assert config.rotary_something is True


def test_save_load_round_trip(tmp_path):
    config = ScratchGPTConfig.from_preset("small", vocab_size=777, tie_word_embeddings=True, eos_token_id=3)
    config.save_pretrained(tmp_path)
    loaded = ScratchGPTConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
