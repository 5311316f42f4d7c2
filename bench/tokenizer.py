"""Tokenizer training on the full chitchat corpus: ours (train_bpe_tokenizer over the streaming source reader)
against the reference (tokenizers' own ByteLevelBPETokenizer.train_from_iterator over the same stream).

Each run happens in a fresh subprocess so its peak RSS is its own; the two alternate, several repetitions each,
and the medians are reported with the ratio ours/reference.

    python bench/tokenizer.py [--vocab-sizes 8192 32000] [--repeats 3] [--json bench/tokenizer.json]
"""

import argparse
import json
import statistics
import subprocess
import sys
import time


CHILD = r"""
import json, resource, sys, time
from scratchgpt.data.sources import iter_documents, iter_texts
from scratchgpt.tokenization import bytes_per_token, hold_out, train_bpe_tokenizer

kind, vocab_size = sys.argv[1], int(sys.argv[2])
texts, held = hold_out(iter_texts(iter_documents(["chitchat"])))
n_bytes = 0

def counted(stream):
    global n_bytes
    for text in stream:
        n_bytes += len(text.encode("utf-8"))
        yield text

start = time.perf_counter()
if kind == "ours":
    tokenizer = train_bpe_tokenizer(counted(texts), vocab_size=vocab_size, min_frequency=2, show_progress=False)
    encode = tokenizer
else:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast
    reference = ByteLevelBPETokenizer()
    reference.train_from_iterator(counted(texts), vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>",
                                                  "<|assistant|>", "<|end|>"])
    encode = PreTrainedTokenizerFast(tokenizer_object=reference._tokenizer)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "train_bytes": n_bytes, "vocab": len(encode),
                  "bytes_per_token": bytes_per_token(encode, held), "held_out_texts": len(held),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(kind: str, vocab_size: int) -> dict:
    output = subprocess.run([sys.executable, "-c", CHILD, kind, str(vocab_size)], check=True, capture_output=True,
                            text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-sizes", type=int, nargs="+", default=[8192, 32000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    results = {}
    for vocab_size in args.vocab_sizes:
        runs = {"ours": [], "reference": []}
        for _ in range(args.repeats):
            for kind in runs:  # alternate, so drift on a shared machine hits both
                runs[kind].append(run(kind, vocab_size))
        summary = {}
        for kind, measured in runs.items():
            seconds = statistics.median(r["seconds"] for r in measured)
            summary[kind] = {"seconds": seconds, "mb_per_s": measured[0]["train_bytes"] / 1e6 / seconds,
                             "peak_rss_mb": max(r["peak_rss_mb"] for r in measured),
                             "bytes_per_token": measured[0]["bytes_per_token"], "vocab": measured[0]["vocab"],
                             "train_mb": measured[0]["train_bytes"] / 1e6}
        summary["time_ratio_ours_over_reference"] = summary["ours"]["seconds"] / summary["reference"]["seconds"]
        results[vocab_size] = summary
        o, r = summary["ours"], summary["reference"]
        print(f"vocab {vocab_size}: ours {o['seconds']:.1f}s ({o['mb_per_s']:.2f} MB/s, {o['peak_rss_mb']:.0f} MB "
              f"RSS, {o['bytes_per_token']:.3f} B/tok) | reference {r['seconds']:.1f}s ({r['mb_per_s']:.2f} MB/s, "
              f"{r['peak_rss_mb']:.0f} MB RSS, {r['bytes_per_token']:.3f} B/tok) | ratio "
              f"{summary['time_ratio_ours_over_reference']:.2f} | {o['train_mb']:.1f} MB trained on")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"repeats": args.repeats, "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
