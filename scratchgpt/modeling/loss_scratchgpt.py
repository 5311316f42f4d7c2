"""The causal-LM training loss of ScratchGPT, computed from the last hidden states a chunk of tokens at a time.

``ScratchGPTForCausalLM`` uses it in training mode with labels (``skip_logits``): the (B, T, V) logits, their float32
copy and log-probabilities, and the (B, T, V) gradient never exist; the matrix multiplications are the same as
those of logits + cross-entropy + backward.

Shapes: B batch, T tokens, D hidden size, V vocabulary, N = B * T, C tokens per chunk.

Copied next to the weights with ``modeling_scratchgpt.py`` by ``save_pretrained``; imports nothing but torch.
"""

import torch
from torch import nn


__all__ = ["chunked_causal_lm_loss", "loss_chunk_rows"]


def loss_chunk_rows(device: torch.device, vocab_size: int, low_precision: bool = False) -> int:
    """Rows of hidden states the chunked loss turns into logits at a time.

    CPU (``bench/loss.py``, 2-core EPYC): the elementwise passes over a chunk's float32 logits run fastest while the
    block stays in cache, the chunk's matrix multiplications want many rows. 512 rows (a 16 MiB block at
    V = 8,192) were fastest or level for V <= 8,192 at every D from 128 to 768, in float32 and under bf16 autocast,
    and for V = 16,384 under bf16, where the matmuls are cheaper; for larger vocabularies 2,048 rows were fastest.
    Accelerators: blocks of about 2**28 logits (1 GiB in float32), so each chunk's matrix multiplications stay
    large and the chunks few, while the memory saved is still most of the logits'.
    """
    if device.type != "cpu":
        return max(2048, 2**28 // vocab_size)
    return 512 if vocab_size <= (16384 if low_precision else 8192) else 2048


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight.T`` against ``targets`` over the rows where ``labelled`` is 1,
    C rows at a time.

    The (N, V) logits never exist at once: for each chunk the forward pass computes the (C, V) logits in float32,
    the loss, and in place the gradient of the loss with respect to the logits (softmax minus one-hot, zero on
    unlabelled rows), which it multiplies into the gradients of ``hidden`` and ``weight`` right away. The backward
    pass only scales those by the incoming gradient. The matrix multiplications are those of logits +
    cross-entropy + backward; what goes is the (N, V) float32 copy, log-softmax, zero-filled gradient and the
    passes over them, and memory for logits is bounded by one chunk. Shapes stay static (no selection of rows), so
    it needs no data-dependent shapes (it is kept out of torch.compile all the same: see below).
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, labelled, chunk_rows):  # (N, D), (V, D), (N,) ids >= 0, (N,) 0/1
        # only the gradients autograd will ask for: a frozen head (LoRA on the blocks) skips the (V, D) one
        needs_hidden, needs_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        needs_grad = needs_hidden or needs_weight
        ctx.weight_dtype = weight.dtype
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if needs_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if needs_weight else None
        device = hidden.device.type
        if torch.is_autocast_enabled(device):  # cast once here rather than in every chunk's matmuls
            hidden, weight = hidden.to(torch.get_autocast_dtype(device)), weight.to(torch.get_autocast_dtype(device))
        for start in range(0, hidden.shape[0], chunk_rows):
            rows = hidden[start : start + chunk_rows]  # (C, D)
            chunk_targets = targets[start : start + chunk_rows, None]  # (C, 1)
            chunk_labelled = labelled[start : start + chunk_rows, None]  # (C, 1) float32
            logits = torch.matmul(rows, weight.t()).float()  # (C, V)
            target_logits = logits.gather(1, chunk_targets)  # (C, 1)
            peak = logits.amax(dim=-1, keepdim=True)  # (C, 1)
            probs = logits.sub_(peak).exp_()  # unnormalised softmax, in place of the logits
            normaliser = probs.sum(dim=-1, keepdim=True)  # (C, 1)
            loss += ((normaliser.log() + peak - target_logits) * chunk_labelled).sum()  # log-sum-exp - target
            if needs_grad:
                # d loss / d logits = softmax - one_hot(target) on labelled rows, 0 elsewhere; (C, V)
                grad_logits = probs.mul_(chunk_labelled / normaliser)
                grad_logits.scatter_add_(1, chunk_targets, -chunk_labelled)
                grad_logits = grad_logits.to(rows.dtype)
                if needs_hidden:
                    grad_hidden[start : start + chunk_rows] = torch.matmul(grad_logits, weight)
                if needs_weight:
                    grad_weight += torch.matmul(grad_logits.t(), rows)  # (V, D), accumulated in float32
        if needs_grad:
            ctx.save_for_backward(grad_hidden, grad_weight.to(ctx.weight_dtype) if needs_weight else None)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        grad_hidden = None if grad_hidden is None else grad_hidden * grad_loss.to(grad_hidden.dtype)
        grad_weight = None if grad_weight is None else grad_weight * grad_loss.to(grad_weight.dtype)
        return grad_hidden, grad_weight, None, None, None


# Never traced by torch.compile: the compiled model runs its blocks as one graph and this loss eagerly. Under torch
# 2.11 with CUDA, dynamo's tracing of the autograd.Function above silently produced zero gradients (grad_norm 0
# through the Trainer, no learning in a compiled bf16 step) and crashed on a recompile; eager, it is exact.
@torch.compiler.disable
def chunked_causal_lm_loss(
    hidden_states: torch.Tensor,  # (B, T, D), the final hidden states
    lm_head_weight: torch.Tensor,  # (V, D)
    labels: torch.LongTensor | None = None,  # (B, T), unshifted; -100 is ignored
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = -100,
    shift_labels: torch.LongTensor | None = None,  # (B, T), already shifted (replaces labels)
    chunk_rows: int | None = None,
    **kwargs,
) -> torch.Tensor:
    """Next-token cross-entropy of the LM head's logits, equal to transformers' ``ForCausalLMLoss`` on
    ``hidden_states @ lm_head_weight.T`` (mean over labelled tokens, or sum / ``num_items_in_batch``), computed
    ``chunk_rows`` tokens at a time (default: ``loss_chunk_rows``) without ever holding the (B, T, V) logits."""
    if chunk_rows is None:
        device = hidden_states.device
        low_precision = torch.is_autocast_enabled(device.type) or hidden_states.dtype in (torch.bfloat16, torch.float16)
        chunk_rows = loss_chunk_rows(device, lm_head_weight.shape[0], low_precision)
    if shift_labels is None:
        shift_labels = nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    shift_labels = shift_labels.reshape(-1).to(hidden_states.device)  # (B*T,)
    labelled = shift_labels != ignore_index
    targets = shift_labels.masked_fill(~labelled, 0)
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])  # (B*T, D)
    if not torch.is_grad_enabled():  # a Function's forward cannot see the grad mode: say so by detaching
        hidden, lm_head_weight = hidden.detach(), lm_head_weight.detach()
    loss = _LinearCrossEntropy.apply(hidden, lm_head_weight, targets, labelled.float(), chunk_rows)
    if num_items_in_batch is None:
        return loss / labelled.sum()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch
