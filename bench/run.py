"""CPU benchmark suite: ScratchGPT against transformers' GPT2LMHeadModel, measured side by side in one process.

    python bench/run.py            # the full CPU set (~10 minutes on 2 cores)
    python bench/run.py --quick    # fewer repetitions and sizes (~2 minutes)

Every comparison alternates ours and the reference, repeats, and reports medians, and the ratio ours/reference as
the median of the per-repetition ratios (each pair ran back to back).
Both models get the same sizes, weights (the reference is built with ``to_gpt2``), activation, batch, sequence
length, precision and attention implementation (sdpa), and run the same matrix multiplications; ours computes the
training loss as train.py does, chunk by chunk from the hidden states without (B, T, V) logits (its default in
training mode with labels). Writes bench/results.json and the "CPU suite" section of BENCHMARKS.md.

Model FLOPs per token follow the PaLM / nanoGPT convention, 6N + 12·L·d·T (forward + backward, attention scores
included; L layers, d hidden size, T sequence length), with N = the parameters that take part in matrix
multiplications: everything but the position embedding and, for an untied model, the token embedding (a lookup,
not a matmul; nanoGPT's tied model counts that matrix once, as the head). Model FLOP
utilisation (MFU) divides FLOPs per token x tokens/s by the matmul throughput measured on this machine in the same
run (the fastest of repeated float32 and bf16 square matmuls, probed before and after the training runs), not by
a datasheet number.
"""

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scratchgpt import ScratchGPTConfig, ScratchGPTForCausalLM  # noqa: E402
from scratchgpt.modeling.convert import to_gpt2  # noqa: E402


HERE = Path(__file__).resolve().parent
VOCAB = 8192


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bf16_supported() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def matmul_tflops(dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    """The machine's matmul throughput: the best of ``repeats`` square matmuls (a peak, so the fastest)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times) / 1e12


def flops_per_token(config: ScratchGPTConfig, seq_len: int) -> float:
    with torch.device("meta"):
        n = ScratchGPTForCausalLM(config).num_parameters() - config.n_positions * config.n_embd
    if not config.tie_word_embeddings:
        n -= config.vocab_size * config.n_embd
    return 6 * n + 12 * config.n_layer * config.n_embd * seq_len


def alternate(functions: dict, repeats: int, calls: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each function, one sample per repetition (``calls`` calls each), calling the functions
    in turn so that drift on a shared machine hits all of them alike."""
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            for _ in range(calls):
                function()
            times[name].append((time.perf_counter() - start) / calls)
    return times


def paired_ratio(times: dict[str, list[float]], slower: str, faster: str) -> float:
    """Median over repetitions of times[slower][i] / times[faster][i]: each pair ran back to back, so a slow phase
    of the machine cancels out instead of landing on one side."""
    return statistics.median(a / b for a, b in zip(times[slower], times[faster]))


def training_step(model, optimizer, batch, autocast: bool):
    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def saved_for_backward_mb(model, batch: torch.Tensor) -> float:
    """Megabytes of activations one training forward keeps for the backward pass (parameters excluded), counted
    through autograd's saved-tensor hooks: a deterministic measure of the activation memory of a step."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids=batch, labels=batch).loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(storages.values()) / 2**20


def bench_training(preset: str, batch: int, seq_len: int, precision: str, repeats: int, compile: bool = False) -> dict:
    torch.manual_seed(0)
    config = ScratchGPTConfig.from_preset(preset, vocab_size=VOCAB, n_positions=seq_len, resid_pdrop=0.0,
                                          embd_pdrop=0.0, attn_pdrop=0.0)
    ours = ScratchGPTForCausalLM(config).train()
    reference = to_gpt2(ours).train()
    data = torch.randint(0, VOCAB, (batch, seq_len))
    steps = {}
    for name, model in (("ours", ours), ("reference", reference)):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        steps[name] = training_step(torch.compile(model) if compile else model, optimizer, data,
                                    autocast=precision == "bf16")
        for _ in range(2):  # warm-up
            steps[name]()
    times = alternate(steps, repeats, calls=3)
    seconds = {name: statistics.median(values) for name, values in times.items()}
    tokens = batch * seq_len
    saved = {}
    if not compile:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            saved = {"ours_saved_mb": saved_for_backward_mb(ours, data),
                     "reference_saved_mb": saved_for_backward_mb(reference, data)}
    return {"preset": preset, "precision": precision + (" compiled" if compile else ""), "batch": batch,
            "seq_len": seq_len,
            "ours_tokens_per_s": tokens / seconds["ours"], "reference_tokens_per_s": tokens / seconds["reference"],
            "ratio": paired_ratio(times, "reference", "ours"), "flops_per_token": flops_per_token(config, seq_len),
            **saved}


@torch.no_grad()
def read_bandwidth_gb_per_s(megabytes: int = 256, repeats: int = 5) -> float:
    """Memory read bandwidth: summing a tensor far larger than the caches."""
    data = torch.ones(megabytes * 2**20 // 4)
    data.sum()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        data.sum()
        times.append(time.perf_counter() - start)
    return data.numel() * 4 / statistics.median(times) / 1e9


@torch.no_grad()
def matrix_vector_seconds(model, steps: int = 64) -> float:
    """Seconds per decoding step spent in the model's Linear layers alone: each applied to one token, in model
    order, as a cached step does (by the time a layer comes round again its weights have left the caches)."""
    linears = [module for module in model.modules() if isinstance(module, torch.nn.Linear)]
    inputs = {linear.in_features: torch.randn(1, 1, linear.in_features) for linear in linears}
    for linear in linears:
        linear(inputs[linear.in_features])
    start = time.perf_counter()
    for _ in range(steps):
        for linear in linears:
            linear(inputs[linear.in_features])
    return (time.perf_counter() - start) / steps


@torch.no_grad()
def matrix_vector_read_rates(shapes=((768, 256), (1024, 256), (256, 1024), (8192, 256)),
                             megabytes: int = 96) -> list[dict]:
    """GB/s of weights read by one-token products y = x W^T with weights too many to stay in cache, for the two
    layouts: nn.Linear's (out, in), as ScratchGPT stores them, and GPT-2 Conv1D's (in, out) through addmm."""
    rates = []
    for out_features, in_features in shapes:
        count = max(4, megabytes * 2**20 // (out_features * in_features * 4))
        weights = [torch.randn(out_features, in_features) for _ in range(count)]
        transposed = [weight.t().contiguous() for weight in weights]
        bias, vector = torch.zeros(out_features), torch.randn(1, in_features)
        layouts = {
            "linear_out_in": lambda i: torch.nn.functional.linear(vector, weights[i], bias),
            "conv1d_in_out": lambda i: torch.addmm(bias, vector, transposed[i]),
        }
        times = alternate({name: lambda f=f: [f(i) for i in range(count)] for name, f in layouts.items()}, 5)
        megabytes_read = count * out_features * in_features * 4 / 1e6
        rates.append({"shape": [out_features, in_features],
                      **{name: megabytes_read / statistics.median(t) / 1e3 for name, t in times.items()}})
    return rates


@torch.no_grad()
def bench_generation(preset: str, new_tokens: int, repeats: int) -> dict:
    torch.manual_seed(0)
    config = ScratchGPTConfig.from_preset(preset, vocab_size=VOCAB, n_positions=512)
    ours = ScratchGPTForCausalLM(config).eval()
    reference = to_gpt2(ours).eval()
    prompt = torch.randint(0, VOCAB, (1, 16))
    settings = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    times = alternate({
        "ours": lambda: ours.generate(prompt, **settings),
        "reference": lambda: reference.generate(prompt, **settings),
        "ours_no_cache": lambda: ours.generate(prompt, use_cache=False, **settings),
    }, repeats)
    seconds = {name: statistics.median(values) for name, values in times.items()}
    weight_bytes = sum(m.weight.numel() * 4 for m in ours.modules() if isinstance(m, torch.nn.Linear))
    return {"preset": preset, "new_tokens": new_tokens,
            **{f"{name}_tokens_per_s": new_tokens / value for name, value in seconds.items()},
            "ratio_vs_reference": paired_ratio(times, "reference", "ours"),
            "cache_speedup": paired_ratio(times, "ours_no_cache", "ours"),
            # what a cached step is made of: reading every weight once for one token
            "cached_step_ms": 1e3 * seconds["ours"] / new_tokens,
            "matrix_vector_ms": 1e3 * matrix_vector_seconds(ours), "linear_weights_mb": weight_bytes / 1e6}


def markdown_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """Lines of a Markdown table: the header, its rule and one line per row of already formatted cells."""
    rule = "|" + "---|" * len(headers)
    return ["| " + " | ".join(headers) + " |", rule, *("| " + " | ".join(cells) + " |" for cells in rows)]


def write_markdown(results: dict, command: str) -> str:
    machine = results["machine"]
    lines = [
        "## CPU suite: training step, generation (ours vs transformers' GPT2LMHeadModel)", "",
        "```bash", command, "```", "",
        f"Machine: {machine['cpu']}, {machine['threads']} threads, torch {machine['torch']}, transformers "
        f"{machine['transformers']}. Measured matmul throughput: {machine['matmul_tflops_fp32']:.3f} TFLOP/s float32"
        + (f", {machine['matmul_tflops_bf16']:.3f} TFLOP/s bf16" if machine.get("matmul_tflops_bf16") else "")
        + f"; memory read bandwidth {machine['read_gb_per_s']:.1f} GB/s. Peak RSS of the run: "
        f"{results['peak_rss_mb']:.0f} MB. Vocabulary {VOCAB:,}; medians of {results['repeats']} alternating "
        f"repetitions of 3 training steps, and of {results['generation_repeats']} generations; ratios are medians "
        "of the per-repetition ratios. "
        "Saved for backward: the activations one training forward keeps for the backward pass "
        "(parameters excluded).", "",
    ]
    lines += markdown_table(
        ["preset", "precision", "batch x seq", "ours tok/s", "GPT2LMHeadModel tok/s", "ratio", "ours MFU", "GPT2 MFU",
         "saved for backward, ours / GPT2"],
        [[r["preset"], r["precision"], f"{r['batch']} x {r['seq_len']}", f"{r['ours_tokens_per_s']:,.0f}",
          f"{r['reference_tokens_per_s']:,.0f}", f"{r['ratio']:.3f}", f"{100 * r['mfu']:.1f}%",
          f"{100 * r['reference_mfu']:.1f}%", f"{r['ours_saved_mb']:,.0f} / {r['reference_saved_mb']:,.0f} MB"]
         for r in results["training"]])
    lines += [""] + markdown_table(
        ["generation", "new tokens", "ours tok/s", "GPT2LMHeadModel tok/s", "ratio", "ours without cache tok/s",
         "cache speed-up"],
        [[r["preset"], str(r["new_tokens"]), f"{r['ours_tokens_per_s']:,.1f}", f"{r['reference_tokens_per_s']:,.1f}",
          f"{r['ratio_vs_reference']:.3f}", f"{r['ours_no_cache_tokens_per_s']:,.1f}", f"{r['cache_speedup']:.2f}x"]
         for r in results["generation"]])
    lines += [""] + markdown_table(
        ["cached decoding step", "ms per token", "of which Linear layers alone", "Linear weights read",
         "their effective read rate"],
        [[r["preset"], f"{r['cached_step_ms']:.2f}", f"{r['matrix_vector_ms']:.2f} ms",
          f"{r['linear_weights_mb']:.1f} MB", f"{r['linear_weights_mb'] / r['matrix_vector_ms']:.1f} GB/s"]
         for r in results["generation"]])
    lines += [""] + markdown_table(
        ["one-token product, weights out of cache: out x in", "nn.Linear layout (out, in)",
         "GPT-2 Conv1D layout (in, out)"],
        [[f"{r['shape'][0]} x {r['shape'][1]}", f"{r['linear_out_in']:.1f} GB/s", f"{r['conv1d_in_out']:.1f} GB/s"]
         for r in machine["matrix_vector_gb_per_s"]])
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and sizes (~2 minutes)")
    parser.add_argument("--no-markdown", action="store_true", help="do not rewrite BENCHMARKS.md")
    parser.add_argument("--compile-only", action="store_true",
                        help="only the training step of the small preset, both models under torch.compile")
    args = parser.parse_args()
    repeats = 3 if args.quick else 7
    import transformers

    machine = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "transformers": transformers.__version__,
               "matmul_tflops_fp32": matmul_tflops(torch.float32), "read_gb_per_s": read_bandwidth_gb_per_s()}
    try:
        machine["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                              if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    precisions = ["fp32"]
    if bf16_supported():
        machine["matmul_tflops_bf16"] = matmul_tflops(torch.bfloat16)
        precisions.append("bf16")
    print(json.dumps(machine))

    if args.compile_only:
        result = bench_training("small", 8, 256, "fp32", repeats, compile=True)
        print(json.dumps(result))
        return
    shapes = [("small", 8, 256)] if args.quick else [("small", 8, 256), ("medium", 4, 512)]
    training = []
    for preset, batch, seq_len in shapes:
        for precision in precisions:
            training.append(bench_training(preset, batch, seq_len, precision, repeats))
            print(json.dumps(training[-1]))
    # the machine's speed drifts on a shared host: probe the matmul peak again after the runs and keep the higher
    for precision, key in (("fp32", "matmul_tflops_fp32"), ("bf16", "matmul_tflops_bf16")):
        if key in machine:
            machine[key] = max(machine[key], matmul_tflops(torch.float32 if precision == "fp32" else torch.bfloat16))
    for result in training:
        peak = machine["matmul_tflops_bf16" if result["precision"] == "bf16" else "matmul_tflops_fp32"] * 1e12
        result["mfu"] = result["flops_per_token"] * result["ours_tokens_per_s"] / peak
        result["reference_mfu"] = result["flops_per_token"] * result["reference_tokens_per_s"] / peak
    generation_repeats = 3 if args.quick else 5
    generation = [bench_generation(preset, 64 if args.quick else 256, generation_repeats)
                  for preset in (["small"] if args.quick else ["small", "medium"])]
    print(json.dumps(generation))
    machine["matrix_vector_gb_per_s"] = matrix_vector_read_rates()

    results = {"machine": machine, "repeats": repeats, "generation_repeats": generation_repeats,
               "training": training, "generation": generation,
               "peak_rss_mb": peak_rss_mb(), "quick": args.quick}
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if not args.no_markdown:
        command = "python bench/run.py" + (" --quick" if args.quick else "")
        section = write_markdown(results, command)
        benchmarks = HERE.parent / "BENCHMARKS.md"
        text = benchmarks.read_text()
        start, end = "<!-- cpu-suite:start -->", "<!-- cpu-suite:end -->"
        block = f"{start}\n{section}{end}"
        if start in text:
            text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
        benchmarks.write_text(text)
    print(write_markdown(results, "python bench/run.py"))


if __name__ == "__main__":
    main()
