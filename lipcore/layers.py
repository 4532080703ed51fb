"""1-Lipschitz layers: thin modules over lipcore.orthogonal, and the GroupSort activations."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .orthogonal import bjorck, frobenius_normalise


def _maxmin(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    a, b = x[..., :h], x[..., h:]
    out = torch.empty_like(x)
    torch.maximum(a, b, out=out[..., :h])
    torch.minimum(a, b, out=out[..., h:])
    return out


class _MaxMinFunction(torch.autograd.Function):
    """MaxMin whose backward routes the gradient with one saved mask and plain arithmetic.

    torch.maximum / torch.minimum rebuild tie masks in their backward and torch.where is slow on
    CPUs; here that elementwise work cost as much as the matrix products of a training step.
    The backward is itself differentiable (double backward works)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[-1] // 2
        # 1.0 where the first half holds the max (written as floats directly: a bool mask and a
        # cast cost 7x more on a CPU)
        mask = torch.empty(x.shape[:-1] + (h,), dtype=x.dtype, device=x.device)
        torch.ge(x[..., :h], x[..., h:], out=mask)
        ctx.save_for_backward(mask)
        return _maxmin(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        mask: torch.Tensor = ctx.saved_tensors[0]
        h = grad.shape[-1] // 2
        g_max, g_min = grad[..., :h], grad[..., h:]
        t = (g_max - g_min) * mask  # first half gets g_max where mask, else g_min
        if torch.is_grad_enabled():  # double backward: stay out of out= (not differentiable)
            return torch.cat([g_min + t, g_max - t], dim=-1)
        out = torch.empty_like(grad)
        torch.add(g_min, t, out=out[..., :h])
        torch.sub(g_max, t, out=out[..., h:])
        return out


class MaxMin(nn.Module):
    """GroupSort with groups of 2, pairing channel i with channel i + k/2: (max, min) halves.

    A permutation of sorted pairs: 1-Lipschitz and gradient-norm preserving. Needs an even width.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 2:
            raise ValueError(f"MaxMin needs an even number of channels, got {x.shape[-1]}")
        if not torch.is_grad_enabled() or not x.requires_grad:
            return _maxmin(x)
        out: torch.Tensor = _MaxMinFunction.apply(x)  # type: ignore[no-untyped-call]
        return out


class FullSort(nn.Module):
    """GroupSort with a single group: sorts the channels (ascending)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sort(x, dim=-1).values


ACTIVATIONS: dict[str, type[nn.Module]] = {"maxmin": MaxMin, "fullsort": FullSort}


class OrthoLinear(nn.Module):
    """Linear layer whose weight is Björck-orthonormalised (``iters`` iterations) at each forward.

    Keep one forward per training step (concatenate the batches) so that the weight is
    orthonormalised once per step. The warm start that lets one or two iterations suffice:
    ``reproject_`` (no grad, after each optimiser step) moves the raw parameter by the correction
    that the last training forward's orthonormalisation applied (W_raw <- W_eff + the optimiser's
    update), which costs no matrix product, then optionally runs ``iters`` more iterations.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        iters: int,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.iters = in_features, out_features, iters
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.orthogonal_(self.weight, generator=generator)
        self.bias = nn.Parameter(torch.zeros(out_features))
        self._correction: torch.Tensor | None = None

    def effective_weight(self) -> torch.Tensor:
        return bjorck(self.weight, self.iters)

    def training_weight(self) -> torch.Tensor:
        """The effective weight; in training mode with grad, also remembers the warm start's
        correction for ``reproject_``."""
        w = self.effective_weight()
        if self.training and torch.is_grad_enabled():
            self._correction = w.detach() - self.weight.detach()
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.training_weight(), self.bias)

    @torch.no_grad()
    def reproject_(self, iters: int = 0) -> None:
        if self._correction is not None:
            self.weight.add_(self._correction)
            self._correction = None
        if iters > 0:
            self.weight.copy_(bjorck(self.weight, iters))


class FrobeniusLinear(nn.Module):
    """The last layer (one output): weight divided by its Frobenius (= spectral) norm."""

    def __init__(
        self, in_features: int, out_features: int = 1, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        w = torch.randn(out_features, in_features, generator=generator)
        self.weight = nn.Parameter(w / w.norm())
        self.bias = nn.Parameter(torch.zeros(out_features))

    def effective_weight(self) -> torch.Tensor:
        return frobenius_normalise(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)
