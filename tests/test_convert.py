"""Conversions, checked against independent oracles: transformers' own GPT-2, and a reference forward pass of the
original project's format written here from its description."""

import json
import os
import subprocess

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from scratchgpt import ScratchGPTForCausalLM
from scratchgpt.cli import main, save_model_folder
from scratchgpt.modeling.convert import from_gpt2, load_legacy_checkpoint, to_gpt2

from .testing_utils import (
    LEGACY_CONFIG,
    TRANSFORMERS_4_PYTHON,
    legacy_state_dict,
    tiny_config,
    tiny_tokenizer,
    write_legacy_folder,
)


def random_ids(batch=2, length=16, vocab=300):
    return torch.randint(0, vocab, (batch, length))


def perturb_norms(model):
    # LayerNorms start at exactly 1 / 0; random values make a swapped weight/bias or a missed tensor visible
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "ln" in name:
                param.normal_(mean=1.0 if name.endswith("weight") else 0.0, std=0.2)
    return model


# --- GPT-2 ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("activation", ["gelu", "gelu_new"])
def test_to_gpt2_matches_logits(tied, attn_implementation, activation):
    model = perturb_norms(ScratchGPTForCausalLM(tiny_config(tie_word_embeddings=tied, activation_function=activation)))
    model.set_attn_implementation(attn_implementation)
    model.eval()
    gpt2 = to_gpt2(model)
    assert isinstance(gpt2, GPT2LMHeadModel)
    assert gpt2.config.tie_word_embeddings == tied and gpt2.config.activation_function == activation
    assert gpt2.config._attn_implementation == attn_implementation
    ids = random_ids()
    assert (gpt2(ids).logits - model(ids).logits).abs().max().item() <= 1e-5


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_from_gpt2_matches_logits(tied, attn_implementation):
    config = GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=4, tie_word_embeddings=tied,
                        bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    gpt2 = perturb_norms(GPT2LMHeadModel(config))
    gpt2.set_attn_implementation(attn_implementation)
    gpt2.eval()
    model = from_gpt2(gpt2)
    assert isinstance(model, ScratchGPTForCausalLM)
    assert model.config.activation_function == "gelu_new" and model.config.tie_word_embeddings == tied
    assert (model.lm_head.weight.data_ptr() == model.model.wte.weight.data_ptr()) == tied
    ids = random_ids()
    assert (model(ids).logits - gpt2(ids).logits).abs().max().item() <= 1e-5
    # generation agrees too (GPT-2 stops on its eos id 0 the same way)
    prompt = ids[:1, :4]
    assert torch.equal(model.generate(prompt, max_new_tokens=10, do_sample=False),
                       gpt2.generate(prompt, max_new_tokens=10, do_sample=False))


def test_gpt2_round_trip_is_exact():
    model = perturb_norms(ScratchGPTForCausalLM(tiny_config())).eval()
    back = from_gpt2(to_gpt2(model))
    for name, tensor in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name


def test_gpt2_export_loads_without_remote_code(tmp_path):
    model = ScratchGPTForCausalLM(tiny_config()).eval()
    to_gpt2(model).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "gpt2" and "auto_map" not in config
    assert not list(tmp_path.glob("*.py"))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=False).eval()
    assert type(loaded) is GPT2LMHeadModel
    ids = random_ids()
    assert (loaded(ids).logits - model(ids).logits).abs().max().item() <= 1e-5


TRANSFORMERS_4_CHECK = """
import json, sys, torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
folder = sys.argv[1]
ids = torch.load(folder + "/../ids.pt")
model = AutoModelForCausalLM.from_pretrained(folder).eval()
tokenizer = AutoTokenizer.from_pretrained(folder)
chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
with torch.no_grad():
    torch.save({"version": transformers.__version__, "classes": [type(model).__name__, type(tokenizer).__name__],
                "ids": tokenizer("The quick brown fox <|user|>").input_ids, "logits": model(ids).logits,
                "greedy": model.generate(ids, max_new_tokens=12, do_sample=False),
                "chat": tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)},
               folder + "/../old.pt")
"""


@pytest.mark.transformers4
def test_gpt2_export_loads_in_transformers_4(tmp_path):
    """`scratchgpt convert to-gpt2`'s folder under transformers 4.57 (what optimum's ONNX exporter and other tools
    pinned to 4.x run on): the same logits, greedy tokens, token ids and chat prompt as here."""
    tokenizer = tiny_tokenizer()
    model = perturb_norms(ScratchGPTForCausalLM(tiny_config(vocab_size=len(tokenizer)))).eval()
    save_model_folder(model, str(tmp_path / "ours"), tokenizer)
    assert main(["convert", "to-gpt2", str(tmp_path / "ours"), str(tmp_path / "gpt2")]) == 0
    ids = tokenizer("The quick brown fox", return_tensors="pt").input_ids
    torch.save(ids, tmp_path / "ids.pt")
    result = subprocess.run([str(TRANSFORMERS_4_PYTHON), "-c", TRANSFORMERS_4_CHECK, str(tmp_path / "gpt2")],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300, stdin=subprocess.DEVNULL,
                            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert result.returncode == 0, result.stderr[-3000:]
    old = torch.load(tmp_path / "old.pt")
    assert old["version"].startswith("4.") and old["classes"] == ["GPT2LMHeadModel", "PreTrainedTokenizerFast"]
    with torch.no_grad():
        torch.testing.assert_close(old["logits"], model(ids).logits, atol=1e-5, rtol=1e-5)
        assert torch.equal(old["greedy"], model.generate(ids, max_new_tokens=12, do_sample=False))
    assert old["ids"] == tokenizer("The quick brown fox <|user|>").input_ids
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert old["chat"] == tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)


def test_from_gpt2_refuses_features_we_do_not_implement():
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                                      scale_attn_by_inverse_layer_idx=True))
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        from_gpt2(gpt2)


# --- legacy checkpoints ---------------------------------------------------------------------------------------------

def legacy_forward(state: dict, config: dict, ids: torch.Tensor) -> torch.Tensor:
    """The original architecture, written from its description: pre-LN blocks, exact GELU, eps 1e-5, untied head."""
    D, H = config["embed_dim"], config["num_heads"]
    B, T = ids.shape
    x = state["token_embedding.weight"][ids] + state["positional_embedding.weight"][:T]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for i in range(config["num_layers"]):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (D,), state[p + "norm1.weight"], state[p + "norm1.bias"], eps=1e-5)
        q, k, v = F.linear(h, state[p + "attention.qkv.weight"], state[p + "attention.qkv.bias"]).split(D, dim=-1)
        q, k, v = (t.view(B, T, H, D // H).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-1, -2)) / (D // H) ** 0.5
        attended = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v
        attended = attended.transpose(1, 2).reshape(B, T, D)
        x = x + F.linear(attended, state[p + "attention.out_proj.weight"], state[p + "attention.out_proj.bias"])
        h = F.layer_norm(x, (D,), state[p + "norm2.weight"], state[p + "norm2.bias"], eps=1e-5)
        h = F.gelu(F.linear(h, state[p + "feed_forward.fc1.weight"], state[p + "feed_forward.fc1.bias"]))
        x = x + F.linear(h, state[p + "feed_forward.fc2.weight"], state[p + "feed_forward.fc2.bias"])
    x = F.layer_norm(x, (D,), state["ln_f.weight"], state["ln_f.bias"], eps=1e-5)
    return x @ state["head.weight"].T


@pytest.mark.parametrize("compiled_prefix", ["", "_orig_mod."])
def test_legacy_import_matches_reference_forward(tmp_path, compiled_prefix):
    state = legacy_state_dict()
    write_legacy_folder(tmp_path, {compiled_prefix + k: v for k, v in state.items()})
    model = load_legacy_checkpoint(tmp_path)
    assert isinstance(model, ScratchGPTForCausalLM) and not model.training
    assert model.config.n_inner == 48 and model.config.n_positions == 16 and not model.config.tie_word_embeddings
    ids = random_ids(length=16, vocab=50)
    assert (model(ids).logits - legacy_forward(state, LEGACY_CONFIG, ids)).abs().max().item() <= 1e-5


def test_legacy_import_checks_total_parameters(tmp_path):
    state = legacy_state_dict()
    count = sum(v.numel() for k, v in state.items() if k != "causal_mask")
    write_legacy_folder(tmp_path / "good", state, LEGACY_CONFIG | {"total_parameters": count})
    assert load_legacy_checkpoint(tmp_path / "good").num_parameters() == count
    write_legacy_folder(tmp_path / "bad", state, LEGACY_CONFIG | {"total_parameters": count + 1})
    with pytest.raises(ValueError, match=f"total_parameters is {count + 1:,} but the weights give {count:,}"):
        load_legacy_checkpoint(tmp_path / "bad")


def test_legacy_import_names_missing_and_unexpected_keys(tmp_path):
    state = legacy_state_dict()
    del state["blocks.1.norm2.bias"]
    state["blocks.0.extra.weight"] = torch.zeros(3)
    write_legacy_folder(tmp_path, state)
    with pytest.raises(ValueError, match=r"missing keys: blocks\.1\.norm2\.bias; unexpected keys: blocks\.0\.extra"):
        load_legacy_checkpoint(tmp_path)


def test_legacy_import_names_shape_mismatches(tmp_path):
    state = legacy_state_dict()
    state["blocks.0.feed_forward.fc1.weight"] = torch.zeros(40, 32)
    write_legacy_folder(tmp_path, state)
    with pytest.raises(ValueError, match=r"blocks\.0\.feed_forward\.fc1\.weight \(40, 32\) \(expected \(48, 32\)\)"):
        load_legacy_checkpoint(tmp_path)


def test_legacy_import_requires_the_files(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LEGACY_CONFIG))
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin: not found"):
        load_legacy_checkpoint(tmp_path)


def test_legacy_import_never_unpickles_objects(tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    state = legacy_state_dict()
    state["optimizer_hook"] = Payload()
    write_legacy_folder(tmp_path, state)
    with pytest.raises(ValueError, match="pytorch_model.bin: holds Python objects besides tensors, which are never "
                                         "unpickled"):
        load_legacy_checkpoint(tmp_path)
    assert "this must never run" not in capsys.readouterr().out


@pytest.mark.gpu
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_cuda_bf16_agrees_with_gpt2(attn_implementation):
    model = ScratchGPTForCausalLM(tiny_config()).to("cuda", torch.bfloat16).eval()
    model.set_attn_implementation(attn_implementation)
    gpt2 = to_gpt2(model)
    ids = random_ids().cuda()
    # bf16 keeps ~3 significant digits; both run the same kernels on the same weights
    torch.testing.assert_close(model(ids).logits.float(), gpt2(ids).logits.float(), atol=2e-2, rtol=0)
