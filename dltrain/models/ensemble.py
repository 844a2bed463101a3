"""Deep ensembles (ensemble.size=K): K members of one architecture, trained side by side in one run.

The members are an `nn.ModuleList` (checkpoints name them `members.0.*`, `members.1.*`, ...), so
every verb that loads a run (eval, predict, export) gets the ensemble. Its `forward` is the
ensemble's prediction: the log of the members' mean class probabilities for classification (so
softmax, argmax and cross-entropy apply to it as to any classifier's logits), the mean output
for regression. Training asks for every member's output at once (`member_outputs`): on a GPU
vectorised over members with torch.func (the members' parameters stacked inside the graph, `vmap`
over a `functional_call`) where the architecture allows it (batch norm updates its running
statistics in place, which vmap cannot batch); on a CPU, and for the others, one member after
another. (On a CPU the members' arithmetic is the cost: for 5 MLP members on digits at one thread
a step takes 5.0x one member's one after another, 6.5x as one batched matmul per layer and 7.1x
under vmap, benchmarks/ensemble.py.)
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

log = logging.getLogger("dltrain")


def vectorizable(member: nn.Module) -> bool:
    """Whether vmap can run `member` in training mode: no module that changes buffers in place."""
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in member.modules())


def use_vmap(member: nn.Module, device: torch.device) -> bool:
    """Whether to train the members under vmap: where it can, on an accelerator (there one member
    leaves the device idle; on a CPU running them one after another is as fast or faster)."""
    return device.type != "cpu" and vectorizable(member)


class Ensemble(nn.Module):
    """`members` (same architecture, different initial weights) combined by `combine`: "probs"
    (classification: log of the mean softmax) or "mean" (regression, forecasting). `in_shape`:
    one example's input shape (tells a batch per member from one batch for all); `vectorize`:
    vmap or not (None: `use_vmap` decides where the first batch is)."""

    def __init__(self, members: list[nn.Module], combine: str = "probs", in_shape: tuple[int, ...] | None = None, vectorize: bool | None = None) -> None:
        super().__init__()
        if combine not in ("probs", "mean"):
            raise ValueError(f"combine={combine!r}: allowed: probs, mean")
        self.members = nn.ModuleList(members)
        self.combine = combine
        self.vectorized = vectorize  # None: decided at the first training batch (use_vmap)
        self.in_shape = tuple(in_shape) if in_shape is not None else None  # one example's input shape
        self._tensors: tuple[list, list] | None = None  # vmap: the members' parameters and buffers by name

    def __len__(self) -> int:
        return len(self.members)

    def member_outputs(self, x: torch.Tensor, per_member: bool = False) -> torch.Tensor:
        """Every member's output, stacked: (K, batch, ...). `per_member`: x is (K, batch, ...),
        member k's own batch (bagging)."""
        if self.vectorized is None:
            self.vectorized = use_vmap(self.members[0], x.device)
        if self.vectorized:
            try:
                return self._vmapped(x, per_member)
            except RuntimeError as e:  # an operation vmap has no batching rule for: members one by one from now on
                self.vectorized = False
                log.info("ensemble: members run one after another (vmap: %s)", str(e).splitlines()[0][:120])
        return torch.stack([m(x[k] if per_member else x) for k, m in enumerate(self.members)])

    def _vmapped(self, x: torch.Tensor, per_member: bool) -> torch.Tensor:
        from torch.func import functional_call, vmap

        template = self.members[0]
        if self._tensors is None:  # (name, each member's tensor) once: moving or loading weights keeps the tensor objects
            self._tensors = tuple([(n, [dict(get(m))[n] for m in self.members]) for n, _ in get(template)] for get in (nn.Module.named_parameters, nn.Module.named_buffers))
        params, buffers = ({n: torch.stack(ts) for n, ts in group} for group in self._tensors)  # stacked in the graph: gradients reach each member

        def one(p, b, xb):
            return functional_call(template, (p, b), (xb,))

        return vmap(one, in_dims=(0, 0, 0 if per_member else None), randomness="different")(params, buffers, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = self.member_outputs(x) if self.training else torch.stack([m(x) for m in self.members])
        if self.combine == "mean":
            return outputs.mean(0)
        return torch.logsumexp(torch.log_softmax(outputs.float(), dim=-1), dim=0) - math.log(len(self.members))
