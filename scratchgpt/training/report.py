"""What a finished run leaves beside its weights: ``training_curves.png`` and ``metrics.json``."""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed (servers, notebooks, CI)
import matplotlib.pyplot as plt  # noqa: E402


__all__ = ["write_report", "plot_curves"]


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
