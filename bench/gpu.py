"""GPU training throughput: the gpt2_small preset (untied, vocab 32,000) against transformers' GPT2LMHeadModel with
identical weights, bf16 autocast, torch.compile, sdpa (flash kernels where the GPU has them), fused AdamW, at
context 512 and 1024, each at the largest power-of-two batch that fits. One command, under 8 minutes on an
H100/H200:

    python bench/gpu.py [--output bench/gpu_results.json] [--steps 10]

Reports tokens/s, model FLOP utilisation against the GPU's dense bf16 peak (table below, by device name), and peak
memory. FLOPs per token: 6N + 12·L·d·T with N the parameters used in matmuls (see bench/run.py).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scratchgpt import ScratchGPTConfig, ScratchGPTForCausalLM  # noqa: E402
from scratchgpt.modeling.convert import to_gpt2  # noqa: E402


PEAK_BF16_TFLOPS = {"A100": 312, "H100": 989, "H200": 989}  # dense, SXM parts
VOCAB = 32000


def peak_tflops(name: str) -> float | None:
    return next((value for key, value in PEAK_BF16_TFLOPS.items() if key in name), None)


def flops_per_token(config: ScratchGPTConfig, seq_len: int) -> float:
    n_matmul = (12 * config.n_layer * config.n_embd**2 + config.vocab_size * config.n_embd)  # blocks + head
    return 6 * n_matmul + 12 * config.n_layer * config.n_embd * seq_len


def build(kind: str, seq_len: int):
    torch.manual_seed(0)
    config = ScratchGPTConfig.from_preset("gpt2_small", vocab_size=VOCAB, n_positions=1024, resid_pdrop=0.0,
                                          embd_pdrop=0.0, attn_pdrop=0.0)
    model = ScratchGPTForCausalLM(config)
    if kind == "reference":
        model = to_gpt2(model)
    return model.cuda().train(), config


def step_function(model, batch: torch.Tensor):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def largest_batch(kind: str, seq_len: int, start: int = 8, limit: int = 256) -> int:
    """The largest power-of-two batch whose eager bf16 training step fits in memory."""
    fits, batch = 0, start
    while batch <= limit:
        model, _ = build(kind, seq_len)
        try:
            step_function(model, torch.randint(0, VOCAB, (batch, seq_len), device="cuda"))()
            torch.cuda.synchronize()
            fits, batch = batch, batch * 2
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            del model
            torch.cuda.empty_cache()
    return fits


def measure(kind: str, seq_len: int, batch: int, steps: int) -> dict:
    model, config = build(kind, seq_len)
    compiled = torch.compile(model)
    data = torch.randint(0, VOCAB, (batch, seq_len), device="cuda")
    step = step_function(compiled, data)
    torch.cuda.reset_peak_memory_stats()
    for _ in range(3):  # compile and warm up
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    tokens_per_s = batch * seq_len / seconds
    peak = peak_tflops(torch.cuda.get_device_name())
    result = {"model": kind, "seq_len": seq_len, "batch": batch, "tokens_per_s": tokens_per_s,
              "step_seconds": seconds, "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30,
              "flops_per_token": flops_per_token(config, seq_len)}
    result["mfu"] = result["flops_per_token"] * tokens_per_s / (peak * 1e12) if peak else None
    del compiled, model
    torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="bench/gpu_results.json")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    device = torch.cuda.get_device_name()
    results = {"device": device, "peak_bf16_tflops": peak_tflops(device), "torch": torch.__version__, "runs": []}
    for seq_len in (512, 1024):
        batch = largest_batch("ours", seq_len)
        for kind in ("ours", "reference"):
            result = measure(kind, seq_len, batch, args.steps)
            results["runs"].append(result)
            print(json.dumps(result), flush=True)
            Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    for seq_len in (512, 1024):
        ours, reference = (next(r for r in results["runs"] if r["model"] == k and r["seq_len"] == seq_len)
                           for k in ("ours", "reference"))
        mfu = f", MFU {100 * ours['mfu']:.1f}% vs {100 * reference['mfu']:.1f}%" if ours["mfu"] else ""
        print(f"{device} T={seq_len} batch {ours['batch']}: ours {ours['tokens_per_s']:,.0f} tok/s, GPT2LMHeadModel "
              f"{reference['tokens_per_s']:,.0f} tok/s (ratio {ours['tokens_per_s'] / reference['tokens_per_s']:.3f})"
              f"{mfu}, peak memory {ours['peak_memory_gb']:.1f} GB")


if __name__ == "__main__":
    main()
