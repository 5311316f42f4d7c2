"""The LM head + loss alone: ScratchGPT's chunked loss against logits + transformers' ForCausalLMLoss, forward and
backward, for several chunk sizes.

    python bench/loss.py [--tokens 2048] [--repeats 7] [--chunks 256 512 1024 2048] [--shapes 256x8192 ...] [--bf16]
    python bench/loss.py --device cuda --bf16 --tokens 32768 --shapes 768x32000 --chunks 2048 8192 32768

Shapes: the small preset's head (D = 256, V = 8,192), the medium preset's (384, 8,192) and a GPT-2-small-like one
(768, 32,000), over ``--tokens`` positions (8 x 256, as in the CPU suite). Every variant starts from the same
hidden states and weight, alternating, medians of ``--repeats``; the ratio is reference time / chunked time.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from transformers.loss.loss_utils import ForCausalLMLoss

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scratchgpt.modeling.loss_scratchgpt import chunked_causal_lm_loss  # noqa: E402

from run import alternate  # noqa: E402  (bench/run.py, beside this script)


SHAPES = [(256, 8192), (384, 8192), (768, 32000)]


def forward_backward(loss_of, hidden, weight, bf16: bool = False):
    device = hidden.device.type

    def run():
        h, w = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_of(h, w)
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()  # time the work, not its launch
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--chunks", type=int, nargs="+", default=[256, 512, 1024, 2048],
                        help="chunk sizes (rows) to measure")
    parser.add_argument("--shapes", nargs="+", default=[f"{d}x{v}" for d, v in SHAPES],
                        help="head shapes as DxV")
    parser.add_argument("--bf16", action="store_true", help="under bf16 autocast, as with --bf16 true in train.py")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    results = []
    chunks = args.chunks
    for shape in args.shapes:
        hidden_size, vocab = map(int, shape.split("x"))
        hidden = torch.randn(1, args.tokens, hidden_size, device=args.device)
        weight = torch.randn(vocab, hidden_size, device=args.device) * 0.02
        labels = torch.randint(0, vocab, (1, args.tokens), device=args.device)
        variants = {"reference": forward_backward(
            lambda h, w: ForCausalLMLoss(h @ w.T, labels, vocab_size=vocab), hidden, weight, args.bf16)}
        for rows in chunks:
            variants[rows] = forward_backward(
                lambda h, w, rows=rows: chunked_causal_lm_loss(h, w, labels, chunk_rows=rows), hidden, weight,
                args.bf16)
        for variant in variants.values():
            variant()
        times = alternate(variants, args.repeats)
        medians = {name: statistics.median(values) for name, values in times.items()}
        row = {"hidden_size": hidden_size, "vocab": vocab, "tokens": args.tokens, "bf16": args.bf16,
               "device": args.device,
               "reference_ms": 1e3 * medians["reference"],
               "chunked_ms": {rows: 1e3 * medians[rows] for rows in chunks}}
        results.append(row)
        best = min(chunks, key=lambda rows: medians[rows])
        print(f"D={hidden_size} V={vocab}: reference {row['reference_ms']:.0f} ms; chunked "
              + ", ".join(f"{rows} rows {1e3 * medians[rows]:.0f} ms" for rows in chunks)
              + f"; best ({best} rows): "
              f"{medians['reference'] / medians[best]:.2f}x", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
