"""The potential's 1-Lipschitz MLP, its input scaling, and the export to plain torch."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from .config import EstimatorConfig
from .fused import Workspace, fused_objective
from .layers import ACTIVATIONS, FrobeniusLinear, OrthoLinear
from .orthogonal import bjorck, frobenius_normalise


class LipschitzMLP(nn.Module):
    """d -> width (x depth hidden layers, orthonormal weights + GroupSort) -> 1 (Frobenius).

    Works in the *scaled* input space z = (x - shift) * scale; ``export`` folds that affine map
    into the first layer, so the exported network takes x itself.
    """

    def __init__(self, d: int, config: EstimatorConfig, generator: torch.Generator) -> None:
        super().__init__()
        self.config = config
        dims = [d] + [config.width] * config.depth
        self.hidden = nn.ModuleList(
            OrthoLinear(dims[i], dims[i + 1], config.ortho_iters, generator)
            for i in range(config.depth)
        )
        self.act = ACTIVATIONS[config.activation]()
        self.out = FrobeniusLinear(config.width, 1, generator)

    def hidden_layers(self) -> list[OrthoLinear]:
        """The hidden layers, typed (an nn.ModuleList yields plain modules)."""
        return cast(list[OrthoLinear], list(self.hidden))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            z = self.act(layer(z))
        out: torch.Tensor = self.out(z)
        return out

    def objective(
        self, z: torch.Tensor, s: torch.Tensor, workspace: Workspace | None = None
    ) -> torch.Tensor:
        """The Kantorovich-Rubinstein batch objective s^T f(z) (s: the rows' signed weights).

        With a ``workspace``, a MaxMin network under grad runs the fused forward and backward of
        lipcore.fused (the training step's fast path: gradients for the parameters only);
        otherwise, or when z or s need a gradient, plain autograd."""
        fusable = (
            self.config.activation == "maxmin"
            and torch.is_grad_enabled()
            and not (z.requires_grad or s.requires_grad)
        )
        if workspace is None or not fusable:
            return torch.dot(s, self(z)[:, 0].to(s.dtype))
        weights = [layer.training_weight() for layer in self.hidden_layers()]
        weights.append(self.out.effective_weight())
        biases = [layer.bias for layer in (*self.hidden, self.out)]
        return fused_objective(workspace, z, s, weights, biases)

    @torch.no_grad()
    def reproject_(self) -> None:
        for layer in self.hidden_layers():
            layer.reproject_(self.config.reproject_iters)

    @torch.no_grad()
    def export(
        self,
        shift: torch.Tensor | None = None,
        scale: float = 1.0,
        dtype: torch.dtype = torch.float64,
    ) -> nn.Sequential:
        """A plain nn.Sequential (Linear, activation, ..., Linear) computing the same function of
        x = z / scale + shift, in ``dtype`` on the CPU. The effective weights are recomputed from
        the raw parameters in float64 with the training-time iterations (so they match training).
        """
        modules: list[nn.Module] = []
        layers: list[OrthoLinear | FrobeniusLinear] = [*self.hidden_layers(), self.out]
        for i, layer in enumerate(layers):
            w = layer.weight.detach().to("cpu", torch.float64)
            if isinstance(layer, OrthoLinear):
                w_eff = bjorck(w, layer.iters)
            else:
                w_eff = frobenius_normalise(w)
            bias = layer.bias.detach().to("cpu", torch.float64)
            if i == 0:
                w_eff = w_eff * float(scale)
                if shift is not None:
                    bias = bias - w_eff @ shift.detach().to("cpu", torch.float64)
            lin = nn.Linear(w_eff.shape[1], w_eff.shape[0], dtype=dtype)
            lin.weight.copy_(w_eff.to(dtype))
            lin.bias.copy_(bias.to(dtype))
            modules.append(lin)
            if i < len(layers) - 1:
                modules.append(ACTIVATIONS[self.config.activation]())
        return nn.Sequential(*modules).requires_grad_(False)
