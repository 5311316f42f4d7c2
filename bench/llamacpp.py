"""Generation speed of one model in llama.cpp (GGUF f32 and q8_0, through llama-cpp-python) and in scratchgpt
(``model.generate`` with a KV cache, greedy, what ``scratchgpt generate --temperature 0`` runs), side by side in one
run, and how closely llama.cpp's logits follow ours.

    python bench/llamacpp.py [--preset tiny] [--vocab 8192] [--new-tokens 256] [--repeats 3] [--json FILE]

The model is the preset with ``activation_function="gelu_new"`` (llama.cpp's GELU), random weights scaled up so the
logits are not flat, and a byte-level BPE trained on chitchat. Greedy decoding of ``--new-tokens`` tokens after a
short prompt, one thread count for both (all cores), medians of ``--repeats``; each llama.cpp load is outside the
timing, as is ours.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scratchgpt import ScratchGPTConfig, ScratchGPTForCausalLM  # noqa: E402
from scratchgpt.data.sources import chitchat_conversations, iter_texts  # noqa: E402
from scratchgpt.modeling.convert import to_gguf  # noqa: E402
from scratchgpt.tokenization import train_bpe_tokenizer  # noqa: E402

PROMPT = "Hello! How are you doing today?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    from llama_cpp import Llama

    texts = [t for _, t in zip(range(30000), iter_texts(chitchat_conversations()))]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=args.vocab, show_progress=False)
    torch.manual_seed(0)
    config = ScratchGPTConfig.from_preset(args.preset, vocab_size=len(tokenizer), activation_function="gelu_new",
                                          n_positions=max(512, 2 * args.new_tokens), resid_pdrop=0.0,
                                          embd_pdrop=0.0, attn_pdrop=0.0)
    model = ScratchGPTForCausalLM(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.mul_(5)
    threads = torch.get_num_threads()
    ids = tokenizer(PROMPT).input_ids
    results = {"preset": args.preset, "vocab": len(tokenizer), "parameters": model.num_parameters(),
               "new_tokens": args.new_tokens, "threads": threads, "tokens_per_s": {}, "max_abs_logit_diff": {}}
    with tempfile.TemporaryDirectory() as tmp:
        engines = {}
        for dtype in ("f32", "q8_0"):
            path = to_gguf(model, tokenizer, Path(tmp) / f"m-{dtype}.gguf", dtype)
            engines[dtype] = Llama(model_path=str(path), n_ctx=config.n_positions, logits_all=True, verbose=False,
                                   n_threads=threads, n_batch=512)
            engines[dtype].eval(ids)
            theirs = np.array(engines[dtype].scores[: len(ids)])
            with torch.no_grad():
                ours = model(torch.tensor([ids])).logits[0].numpy()
            results["max_abs_logit_diff"][dtype] = float(np.abs(ours - theirs).max())

        def llama_run(engine):
            def run():
                engine.reset()
                count = 0
                for _ in engine.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
                    count += 1
                    if count == args.new_tokens:
                        break
            return run

        prompt = torch.tensor([ids])

        def ours():
            # what `scratchgpt generate --temperature 0` runs, with no end-of-text stop: every run makes N tokens
            output = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=args.new_tokens,
                                    do_sample=False, eos_token_id=None, pad_token_id=tokenizer.pad_token_id)
            assert output.shape[1] == len(ids) + args.new_tokens

        variants = {"scratchgpt": ours,
                    "llama.cpp f32": llama_run(engines["f32"]), "llama.cpp q8_0": llama_run(engines["q8_0"])}
        for function in variants.values():
            function()  # warm-up
        times = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, function in variants.items():
                start = time.perf_counter()
                function()
                times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        results["tokens_per_s"][name] = args.new_tokens / statistics.median(values)
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
