"""LoRA training steps per second (PEFT adapters on the blocks' Linear layers, the head frozen): ScratchGPT's
chunked loss, which skips the frozen head's weight gradient, against logits + transformers' ForCausalLMLoss on the
same model, batch and adapter.

    python bench/lora.py [--preset small] [--vocab 32000] [--batch 8] [--seq 256] [--repeats 7] [--json out.json]
    python bench/lora.py --only chunked      # one variant alone: its own peak RSS

Both variants train the same PEFT model from the same start (the weights are restored before each timed step), in
turn, so machine drift hits both alike; the ratio is the median over repetitions of reference time / chunked time.
"""

import argparse
import json
import resource
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scratchgpt import ScratchGPTConfig, ScratchGPTForCausalLM  # noqa: E402
from scratchgpt.training.arguments import LORA_TARGET_MODULES  # noqa: E402

from run import alternate, paired_ratio  # noqa: E402  (bench/run.py, beside this script)


def lora_step(model, optimizer, batch: torch.Tensor, skip_logits: bool, start: dict):
    def step():
        model.load_state_dict(start, strict=False)  # every step from the same adapter weights
        loss = model(input_ids=batch, labels=batch, skip_logits=skip_logits).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def main() -> None:
    from peft import LoraConfig, get_peft_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--only", choices=["reference", "chunked"], default=None,
                        help="time one variant alone, so that the peak RSS is its own")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = ScratchGPTConfig.from_preset(args.preset, vocab_size=args.vocab, resid_pdrop=0.0, embd_pdrop=0.0,
                                          attn_pdrop=0.0)
    model = get_peft_model(ScratchGPTForCausalLM(config),
                           LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0,
                                      target_modules=list(LORA_TARGET_MODULES), task_type="CAUSAL_LM")).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    start = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    batch = torch.randint(0, args.vocab, (args.batch, args.seq))
    variants = {"reference": lora_step(model, optimizer, batch, False, start),
                "chunked": lora_step(model, optimizer, batch, True, start)}
    if args.only:
        variants = {args.only: variants[args.only]}
    for variant in variants.values():
        variant()  # warm-up: allocator, optimizer state
    times = alternate(variants, args.repeats)
    medians = {name: statistics.median(values) for name, values in times.items()}
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.only:
        print(f"{args.only} alone: {1 / medians[args.only]:.2f} steps/s, peak RSS {peak_rss_mb:.0f} MB")
        return
    result = {
        "preset": args.preset, "vocab": args.vocab, "batch": args.batch, "seq": args.seq, "rank": args.rank,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "trainable_parameters": sum(p.numel() for p in trainable),
        "parameters": sum(p.numel() for p in model.parameters()),
        "reference_steps_per_s": 1 / medians["reference"], "chunked_steps_per_s": 1 / medians["chunked"],
        "speedup": paired_ratio(times, "reference", "chunked"),
        "peak_rss_mb": peak_rss_mb,  # both variants in one process: see --only for each alone
    }
    print(f"LoRA r={args.rank} on {args.preset} (vocab {args.vocab}), batch {args.batch} x {args.seq}: "
          f"logits + ForCausalLMLoss {result['reference_steps_per_s']:.2f} steps/s, chunked "
          f"{result['chunked_steps_per_s']:.2f} steps/s: {result['speedup']:.2f}x; peak RSS "
          f"{result['peak_rss_mb']:.0f} MB", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
