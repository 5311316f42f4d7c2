"""GPU training throughput: the gpt2_small preset (untied, vocab 32,000) against transformers' GPT2LMHeadModel with
identical weights, bf16 autocast, torch.compile, sdpa (flash kernels where the GPU has them), fused AdamW, at
context 512 and 1024, at power-of-two batches. One command, under 8 minutes on an H100/H200:

    python bench/gpu.py [--output bench/gpu_results.json] [--steps 10] [--lengths 512 1024]
    python bench/gpu.py --smoke --output /tmp/gpu_smoke.json    # the same control flow on a CPU, tiny sizes

The two models are compared at the largest batch both fit; ScratchGPT's chunked loss keeps no (B, T, V) logits,
so when it fits a larger batch it is measured there too. Reports tokens/s, model FLOP utilisation against the
GPU's dense bf16 peak (table below, by device name) and against the bf16 matrix-multiply rate measured at the start
of the same run (8192^3 products on random data), and peak memory. FLOPs per token: 6N + 12·L·d·T with N the
parameters used in matmuls (see bench/run.py).
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


def measured_matmul_tflops(device: str, size: int = 8192, repeats: int = 10) -> float:
    """The bf16 matrix-multiply rate this device reaches: mean of ``repeats`` square products after 3 warm-ups, on
    random data (zeros run faster and would flatter it)."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def flops_per_token(config: ScratchGPTConfig, seq_len: int) -> float:
    n_matmul = (12 * config.n_layer * config.n_embd**2 + config.vocab_size * config.n_embd)  # blocks + head
    return 6 * n_matmul + 12 * config.n_layer * config.n_embd * seq_len


def build(kind: str, preset: str, device: str):
    torch.manual_seed(0)
    config = ScratchGPTConfig.from_preset(preset, vocab_size=VOCAB, n_positions=1024, resid_pdrop=0.0,
                                          embd_pdrop=0.0, attn_pdrop=0.0)
    model = ScratchGPTForCausalLM(config)
    if kind == "reference":
        model = to_gpt2(model)
    return model.to(device).train(), config


def step_function(model, batch: torch.Tensor):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step():
        with torch.autocast(batch.device.type, dtype=torch.bfloat16):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def largest_batch(kind: str, preset: str, seq_len: int, device: str, start: int = 8, limit: int = 256) -> int:
    """The largest power-of-two batch whose eager bf16 training step fits in memory (0 if none does)."""
    fits, batch = 0, start
    while batch <= limit:
        model, _ = build(kind, preset, device)
        try:
            step_function(model, torch.randint(0, VOCAB, (batch, seq_len), device=device))()
            synchronize(device)
            fits, batch = batch, batch * 2
        except torch.OutOfMemoryError:
            break
        finally:
            del model
            if device == "cuda":
                torch.cuda.empty_cache()
    return fits


def measure(kind: str, preset: str, seq_len: int, batch: int, steps: int, device: str, compile: bool,
            matmul_tflops: float | None = None) -> dict:
    model, config = build(kind, preset, device)
    data = torch.randint(0, VOCAB, (batch, seq_len), device=device)
    # static shapes: each (model, length) is its own graph, never a dynamic-shape recompile of an earlier one
    step = step_function(torch.compile(model, dynamic=False) if compile else model, data)
    result = {"model": kind, "seq_len": seq_len, "batch": batch, "flops_per_token": flops_per_token(config, seq_len)}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        for _ in range(3):  # compile and warm up
            step()
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        seconds = (time.perf_counter() - start) / steps  # the steps only: freeing memory below is not timed
    except torch.OutOfMemoryError:  # a compiled step can need more memory than the eager probe did
        return {**result, "out_of_memory": True}
    finally:
        del step, model
        if device == "cuda":
            torch.cuda.empty_cache()
    result.update(tokens_per_s=batch * seq_len / seconds, step_seconds=seconds)
    achieved = result["flops_per_token"] * result["tokens_per_s"] / 1e12
    if matmul_tflops:
        result["mfu_vs_measured_matmul"] = achieved / matmul_tflops
    if device == "cuda":
        result["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        peak = peak_tflops(torch.cuda.get_device_name())
        result["mfu"] = achieved / peak if peak else None
    return result


def describe(run: dict) -> str:
    if run.get("out_of_memory"):
        return f"{run['model']} batch {run['batch']}: out of memory"
    mfu = f", MFU {100 * run['mfu']:.1f}%" if run.get("mfu") else ""
    if run.get("mfu_vs_measured_matmul"):
        mfu += f" ({100 * run['mfu_vs_measured_matmul']:.1f}% of the measured matmul rate)"
    memory = f", peak memory {run['peak_memory_gb']:.1f} GB" if "peak_memory_gb" in run else ""
    return f"{run['model']} batch {run['batch']}: {run['tokens_per_s']:,.0f} tok/s{mfu}{memory}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="bench/gpu_results.json")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--lengths", type=int, nargs="+", default=None, help="sequence lengths (default 512 1024)")
    parser.add_argument("--smoke", action="store_true",
                        help="check the script itself on the CPU: tiny preset, short sequences, no compile")
    args = parser.parse_args()
    if args.smoke:
        device, preset, lengths, limit, compile = "cpu", "tiny", (32, 64), 16, False
    elif torch.cuda.is_available():
        device, preset, lengths, limit, compile = "cuda", "gpt2_small", (512, 1024), 256, True
        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        sys.exit("bench/gpu.py needs a CUDA GPU (or --smoke to check the script on the CPU)")
    lengths = args.lengths or lengths
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke test)"
    matmul = measured_matmul_tflops(device, size=256 if args.smoke else 8192)
    print(f"{name}: matrix multiply {matmul:,.1f} TFLOP/s measured", flush=True)
    results = {"device": name, "peak_bf16_tflops": peak_tflops(name), "measured_matmul_tflops": matmul,
               "torch": torch.__version__, "runs": []}

    def record(run: dict) -> None:
        results["runs"].append(run)
        print(json.dumps(run), flush=True)
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")

    for seq_len in lengths:
        largest = {kind: largest_batch(kind, preset, seq_len, device, start=2 if args.smoke else 32, limit=limit)
                   for kind in ("ours", "reference")}
        # side by side at the batch both fit; then ours alone at its own largest batch, if the chunked loss's
        # smaller memory lets it fit a larger one
        common = min(largest.values())
        for kind in ("ours", "reference"):
            run = measure(kind, preset, seq_len, common, args.steps, device, compile, matmul)
            record({**run, "largest_batch": largest[kind]})
        if largest["ours"] > common:
            record({**measure("ours", preset, seq_len, largest["ours"], args.steps, device, compile, matmul),
                    "largest_batch": largest["ours"]})
    for seq_len in lengths:
        runs = [run for run in results["runs"] if run["seq_len"] == seq_len]
        ours, reference = runs[0], runs[1]
        ratio = ("" if ours.get("out_of_memory") or reference.get("out_of_memory")
                 else f" (ratio {ours['tokens_per_s'] / reference['tokens_per_s']:.3f})")
        print(f"{name} T={seq_len}: " + "; ".join(describe(run) for run in runs) + ratio)


if __name__ == "__main__":
    main()
