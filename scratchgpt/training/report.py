"""What a finished run leaves beside its weights (``training_curves.png``, ``metrics.json``) and says at its end."""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed (servers, notebooks, CI)
import matplotlib.pyplot as plt  # noqa: E402


__all__ = ["write_report", "plot_curves", "run_summary"]


def plot_curves(log_history: list[dict], path: str | Path) -> None:
    """Train and validation loss against step (left), learning rate (right), from ``trainer.state.log_history``."""
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    validation = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e]
    learning_rate = [(e["step"], e["learning_rate"]) for e in log_history if "learning_rate" in e]
    figure, (loss_axis, lr_axis) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        loss_axis.plot(*zip(*train), label="train")
    if validation:
        loss_axis.plot(*zip(*validation), marker="o", label="validation")
    loss_axis.set(xlabel="step", ylabel="loss (nats/token)", title="Loss")
    loss_axis.legend()
    loss_axis.grid(alpha=0.3)
    if learning_rate:
        lr_axis.plot(*zip(*learning_rate))
    lr_axis.set(xlabel="step", ylabel="learning rate", title="Learning rate")
    lr_axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(output_dir: str | Path, log_history: list[dict], metrics: dict) -> None:
    output_dir = Path(output_dir)
    plot_curves(log_history, output_dir / "training_curves.png")
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _evaluated_weights(metrics: dict) -> str:
    """Which weights the final figures (and the saved model) are of."""
    kept = metrics.get("kept_weights") or {"step": metrics["global_step"]}
    if kept["step"] == metrics["global_step"]:
        return f"after {metrics['global_step']} steps"
    return f"of the saved weights, from step {kept['step']} ({kept['reason']})"


def run_summary(metrics: dict) -> str:
    """The end of a run for the person who started it: the validation figures (and which weights they are of), the
    sample generations, and where the results are with what to try next."""
    lines = []
    if "eval_perplexity" in metrics:
        start = metrics.get("eval_perplexity_at_start")
        lines.append(f"\nvalidation perplexity {metrics['eval_perplexity']:.2f}" +
                     (f" (at the start: {start:.2f})" if start is not None else "") +
                     f", next-token accuracy {metrics['eval_accuracy']:.3f}, {_evaluated_weights(metrics)}")
    for sample in metrics.get("samples", []):
        if "base_reply" in sample:
            lines.append(f"\n> {sample['prompt']}\nbefore: {sample['base_reply']}\nafter:  {sample['reply']}")
        else:
            lines.append(f"\n> {sample['prompt']}\n{sample['reply']}")
    output_dir = metrics["output_dir"]
    chat = metrics.get("training", {}).get("chat", True)
    try_chat = f"scratchgpt chat {output_dir}\n  " if chat else ""
    samples = metrics.get("samples") or [{"prompt": "Once upon a time"}]
    prompt = "Once upon a time" if chat else samples[0]["prompt"]  # plain text: a start like its own
    lines.append(f"""
The model, its tokenizer, metrics.json and training_curves.png are in {output_dir}/. Next, in this environment
(after `source .venv/bin/activate` if you used `make`):

  {try_chat}scratchgpt generate {output_dir} --prompt {json.dumps(prompt)} --max-new-tokens 60
  python push_to_hub.py {output_dir} your-name/your-model --dry-run""")
    return "\n".join(lines)
