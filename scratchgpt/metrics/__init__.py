"""``evaluate`` metric modules shipped with the package, loadable offline: ``evaluate.load(metric_path("perplexity"))``."""

from pathlib import Path


__all__ = ["metric_path"]


def metric_path(name: str) -> str:
    """Local path of a shipped metric module (``perplexity``, ``next_token_accuracy``) for ``evaluate.load``."""
    path = Path(__file__).parent / name / f"{name}.py"
    if not path.is_file():
        raise ValueError(f"no shipped metric {name!r}")
    return str(path)
