"""Perplexity from per-token negative log-likelihoods: exp(mean NLL), weighting every token equally."""

import datasets
import evaluate
import numpy as np


_DESCRIPTION = "Perplexity of a language model from the negative log-likelihood (nats) of each predicted token."
_KWARGS_DESCRIPTION = """
Args:
    nll: per-token negative log-likelihoods in nats (padding / ignored positions left out).
    num_bytes: optional, the UTF-8 size of the text those tokens spell; adds bits_per_byte.
Returns:
    perplexity: exp(mean nll); mean_nll: the mean itself; tokens: how many tokens were scored;
    bits_per_byte: sum(nll) / ln(2) / num_bytes (tokenizer-independent), when num_bytes is given.
Example:
    >>> metric = evaluate.load("scratchgpt/metrics/perplexity/perplexity.py")
    >>> metric.compute(nll=[0.0, 0.0])["perplexity"]
    1.0
"""


class Perplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"nll": datasets.Value("float64")}),
        )

    def _compute(self, nll, num_bytes=None):
        values = np.asarray(nll, dtype=np.float64)
        mean = float(values.mean()) if values.size else float("nan")
        result = {"perplexity": float(np.exp(mean)), "mean_nll": mean, "tokens": int(values.size)}
        if num_bytes:
            result["bits_per_byte"] = float(values.sum() / np.log(2) / num_bytes)
        return result
