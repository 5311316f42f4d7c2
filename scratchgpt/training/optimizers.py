"""Muon for the transformer blocks' matrices and AdamW for every other parameter, as one optimizer the Trainer treats
like any other (``optim: muon`` in a run config).

Muon (``torch.optim.Muon``) keeps a momentum of each 2-D weight's gradient and replaces the update by its nearest
semi-orthogonal matrix (a few Newton-Schulz iterations), so every direction of the matrix moves at the same rate. It
is meant for the hidden matrices only: embeddings, the LM head, LayerNorms and biases are not matrices acting on
hidden states, and stay on AdamW (https://kellerjordan.github.io/posts/muon/). Both are PyTorch's own optimizers;
what this module adds is the split and the plumbing:

- ``param_groups`` are the two optimizers' own group dicts (AdamW's first, so the Trainer's logged learning rate is
  AdamW's), so the Trainer's LR scheduler scales both learning rates by the same schedule and gradient clipping and
  ``zero_grad`` see every parameter;
- ``state_dict`` holds both optimizers' states, so a checkpoint resumes both bitwise.
"""

import logging
from collections.abc import Mapping

import torch
from torch import nn

from ..modeling.modeling_scratchgpt import ScratchGPTBlock


__all__ = ["MuonWithAdamW", "hidden_matrices", "muon_optimizer_cls_and_kwargs"]

logger = logging.getLogger(__name__)

def hidden_matrices(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The trainable 2-D weights inside the transformer blocks, by name: qkv, out_proj, fc_in and fc_out of each block
    (or, in a LoRA model, the adapters' A and B matrices there). LayerNorm weights and biases are 1-D; the
    embeddings and the LM head live outside the blocks."""
    found = []
    for block_name, block in model.named_modules():
        if isinstance(block, ScratchGPTBlock):
            found += [(f"{block_name}.{name}", parameter) for name, parameter in block.named_parameters()
                      if parameter.ndim == 2 and parameter.requires_grad]
    return found


class _States(Mapping):
    """Both optimizers' per-parameter states, read-only. (A ChainMap would not do: looking a key up in the first
    optimizer's ``defaultdict`` state adds it there.)"""

    def __init__(self, *states):
        self.states = states

    def __getitem__(self, parameter):
        for state in self.states:
            if parameter in state:
                return state[parameter]
        raise KeyError(parameter)

    def __iter__(self):
        return (parameter for state in self.states for parameter in state)

    def __len__(self):
        return sum(len(state) for state in self.states)


class MuonWithAdamW(torch.optim.Optimizer):
    """``torch.optim.Muon`` on ``muon_params`` and ``torch.optim.AdamW`` on the rest of ``params``.

    ``params`` are the groups the Trainer builds (its weight-decay and no-decay groups); each is split, the matrices
    going to Muon with ``muon_lr``, ``muon_momentum`` and ``muon_weight_decay``, the rest to AdamW with the group's
    own weight decay. Muon's decay is decoupled (each step multiplies a matrix by ``1 - muon_lr * muon_weight_decay``),
    which is why it has a setting of its own."""

    def __init__(self, params, muon_params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, muon_lr: float = 0.02, muon_momentum: float = 0.95,
                 muon_weight_decay: float = 0.0):
        groups = list(params)
        if groups and isinstance(groups[0], torch.Tensor):
            groups = [{"params": groups}]
        hidden = {id(parameter) for parameter in muon_params}
        muon_groups, adamw_groups = [], []
        for group in groups:
            settings = {key: value for key, value in group.items() if key != "params"}
            members = list(group["params"])
            if matrices := [p for p in members if id(p) in hidden]:
                muon_groups.append({"params": matrices})
            if others := [p for p in members if id(p) not in hidden]:
                adamw_groups.append({**settings, "params": others})
        if not muon_groups:
            raise ValueError("optim muon: no trainable 2-D weight inside the transformer blocks to give Muon")
        self.muon = torch.optim.Muon(muon_groups, lr=muon_lr, momentum=muon_momentum, weight_decay=muon_weight_decay)
        # AdamW's groups carry their own weight decay (the Trainer's decay / no-decay split)
        self.adamw = torch.optim.AdamW(adamw_groups, lr=lr, betas=betas, eps=eps) if adamw_groups else None
        super().__init__([p for group in groups for p in group["params"]], {})
        self._link()

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [optimizer for optimizer in (self.adamw, self.muon) if optimizer is not None]

    def _link(self) -> None:
        """Expose the two optimizers' own groups and states (again after a load replaced them)."""
        self.param_groups = [group for optimizer in self.optimizers for group in optimizer.param_groups]
        self.state = _States(*(optimizer.state for optimizer in self.optimizers))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for optimizer in self.optimizers:
            optimizer.step()
        return loss

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict() if self.adamw else None}

    def load_state_dict(self, state_dict: dict) -> None:
        if set(state_dict) != {"muon", "adamw"}:
            raise ValueError("not the state of a Muon + AdamW optimizer (a checkpoint saved with another optim?)")
        self.muon.load_state_dict(state_dict["muon"])
        if self.adamw is not None:
            self.adamw.load_state_dict(state_dict["adamw"])
        self._link()


def muon_optimizer_cls_and_kwargs(model: nn.Module, args) -> tuple[type, dict]:
    """What ``Trainer(optimizer_cls_and_kwargs=...)`` takes for ``optim: muon``; logs which parameters go where."""
    matrices = hidden_matrices(model)
    if not matrices:
        raise ValueError("optim muon: the model has no trainable 2-D weight inside its transformer blocks")
    hidden = {id(parameter) for _, parameter in matrices}
    others = [(name, p) for name, p in model.named_parameters() if p.requires_grad and id(p) not in hidden]
    logger.info("optimizer: Muon (lr %g, momentum %g, weight decay %g) on %d matrices of the blocks (%s parameters); "
                "AdamW (lr %g, weight decay %g) on %d other tensors (%s parameters: embeddings, head, LayerNorms, "
                "biases)", args.muon_learning_rate, args.muon_momentum, args.muon_weight_decay, len(matrices),
                f"{sum(p.numel() for _, p in matrices):,}", args.learning_rate, args.weight_decay, len(others),
                f"{sum(p.numel() for _, p in others):,}")
    logger.debug("Muon: %s", ", ".join(name for name, _ in matrices))
    return MuonWithAdamW, {
        "muon_params": [parameter for _, parameter in matrices], "lr": args.learning_rate,
        "betas": (args.adam_beta1, args.adam_beta2), "eps": args.adam_epsilon, "muon_lr": args.muon_learning_rate,
        "muon_momentum": args.muon_momentum, "muon_weight_decay": args.muon_weight_decay,
    }
