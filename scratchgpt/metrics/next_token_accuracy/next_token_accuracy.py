"""Next-token accuracy: the fraction of positions where the most likely token is the one that came next."""

import datasets
import evaluate
import numpy as np


_DESCRIPTION = "Top-1 accuracy of next-token predictions."
_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted token ids (argmax of the logits), already aligned with the references.
    references: the actual next token ids (ignored positions left out).
Returns:
    accuracy: fraction of exact matches.
Example:
    >>> metric = evaluate.load("scratchgpt/metrics/next_token_accuracy/next_token_accuracy.py")
    >>> metric.compute(predictions=[1, 2, 3], references=[1, 2, 4])["accuracy"]
    0.6666666666666666
"""


class NextTokenAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        predictions, references = np.asarray(predictions), np.asarray(references)
        return {"accuracy": float((predictions == references).mean()) if references.size else float("nan")}
