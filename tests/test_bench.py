"""The benchmark scripts' conventions (the runs themselves are too long for the test suite)."""

import importlib.util
from pathlib import Path

import pytest
import torch

from scratchgpt import ScratchGPTConfig

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flops_per_token_counts_matmul_parameters_only():
    run, gpu = load("run"), load("gpu")
    config = ScratchGPTConfig.from_preset("gpt2_small", vocab_size=32000)
    blocks = 12 * (3 * 768 * 768 + 3 * 768 + 768 * 768 + 768 + 2 * 768 * 3072 + 3072 + 768 + 4 * 768)
    head = 32000 * 768
    expected = 6 * (blocks + 2 * 768 + head) + 12 * 12 * 768 * 512  # blocks, final LayerNorm, head; attention
    assert run.flops_per_token(config, 512) == expected
    # the GPU script's closed form leaves out biases and LayerNorms: within 0.2%
    assert abs(gpu.flops_per_token(config, 512) / expected - 1) < 2e-3


def test_gpu_peak_table_and_matmul_probe():
    gpu, run = load("gpu"), load("run")
    assert gpu.peak_tflops("NVIDIA H100 80GB HBM3") == 989 and gpu.peak_tflops("NVIDIA A100-SXM4-40GB") == 312
    assert gpu.peak_tflops("NVIDIA H200") == 989 and gpu.peak_tflops("Tesla T4") is None
    assert run.matmul_tflops(torch.float32, size=128, repeats=2) > 0


def test_saved_for_backward_counts_activations_and_shows_the_logits_left_out():
    from scratchgpt import ScratchGPTForCausalLM
    from scratchgpt.modeling.convert import to_gpt2

    from .testing_utils import tiny_config

    run = load("run")
    ours = ScratchGPTForCausalLM(tiny_config()).train()
    reference = to_gpt2(ours).train()
    batch = torch.randint(0, 300, (4, 64))
    logits_mb = 4 * 64 * 300 * 4 / 2**20
    ours_mb, reference_mb = run.saved_for_backward_mb(ours, batch), run.saved_for_backward_mb(reference, batch)
    # the reference keeps the float32 log-probabilities (B, T, V); ours keeps (B*T, D) + (V, D) gradients instead
    assert reference_mb - ours_mb > 0.5 * logits_mb
    assert all(p.grad is None for p in ours.parameters())  # measuring leaves no gradients behind
    assert run.matrix_vector_seconds(ours, steps=2) > 0 and run.read_bandwidth_gb_per_s(megabytes=8) > 0
    rates = run.matrix_vector_read_rates(shapes=((64, 32),), megabytes=1)
    assert rates[0]["shape"] == [64, 32] and rates[0]["linear_out_in"] > 0 and rates[0]["conv1d_in_out"] > 0


def test_gpu_script_control_flow_runs_on_the_cpu(tmp_path):
    import json
    import subprocess
    import sys

    output = tmp_path / "gpu.json"
    result = subprocess.run([sys.executable, str(BENCH / "gpu.py"), "--smoke", "--steps", "1", "--output", str(output)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(output.read_text())["runs"]
    # per length: ours and the reference at the same batch, first
    assert [(r["model"], r["seq_len"]) for r in runs[:2]] == [("ours", 32), ("reference", 32)]
    assert runs[0]["batch"] == runs[1]["batch"] > 0 and all(r["tokens_per_s"] > 0 for r in runs)
    assert "T=64" in result.stdout


def test_loss_script_runs_and_records_each_chunk_size(tmp_path):
    import json
    import subprocess
    import sys

    output = tmp_path / "loss.json"
    result = subprocess.run([sys.executable, str(BENCH / "loss.py"), "--shapes", "32x64", "--chunks", "8", "16",
                             "--repeats", "1", "--tokens", "32", "--json", str(output)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    [row] = json.loads(output.read_text())
    assert (row["hidden_size"], row["vocab"], row["tokens"]) == (32, 64, 32)
    assert set(row["chunked_ms"]) == {"8", "16"} and row["reference_ms"] > 0


@pytest.mark.peft
def test_lora_script_times_both_losses_on_the_same_adapter(tmp_path):
    import json
    import subprocess
    import sys

    output = tmp_path / "lora.json"
    result = subprocess.run([sys.executable, str(BENCH / "lora.py"), "--preset", "tiny", "--vocab", "500",
                             "--batch", "2", "--seq", "16", "--rank", "2", "--repeats", "1", "--json", str(output)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads(output.read_text())
    assert row["reference_steps_per_s"] > 0 and row["chunked_steps_per_s"] > 0 and row["speedup"] > 0
    assert 0 < row["trainable_parameters"] < row["parameters"] / 4  # the adapters only


def test_trainer_timer_spans_the_measured_steps_only():
    from types import SimpleNamespace

    trainer = load("trainer")
    timer, args = trainer.StepTimer(), SimpleNamespace(max_steps=trainer.WARMUP + 3)
    for step in range(args.max_steps):  # the Trainer's calls: step begins at global_step, ends at global_step + 1
        timer.on_step_begin(args, SimpleNamespace(global_step=step), None)
        timer.on_step_end(args, SimpleNamespace(global_step=step + 1), None)
        if step == trainer.WARMUP - 1:
            assert timer.start is None
    assert timer.start is not None and timer.seconds is not None  # stopped at the last step's end
    timer.seconds = None
    timer.on_train_end(args, SimpleNamespace(global_step=args.max_steps), None)
    assert timer.seconds is None  # the end-of-training work is not timed
