"""Saving and loading the exported potential (safetensors + JSON metadata)."""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .envelope import Envelope
from .layers import ACTIVATIONS

FORMAT = "lipwass-potential"
VERSION = 1
_JSON_KEYS = ("architecture", "config", "lipschitz_constant", "lower_bound", "d", "version")


def input_dim(model: nn.Module) -> int:
    """d: the number of features a potential takes (its first Linear layer's or envelope's)."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            return int(m.in_features)
        if isinstance(m, Envelope):
            return int(m.anchors.shape[1])
    raise ValueError(f"{type(model).__name__}: no Linear layer or envelope to take the inputs")


def architecture(model: nn.Sequential) -> list[dict[str, Any]]:
    arch: list[dict[str, Any]] = []
    names = {cls: name for name, cls in ACTIVATIONS.items()}
    for m in model:
        if isinstance(m, nn.Linear):
            arch.append({"type": "linear", "in": m.in_features, "out": m.out_features})
        elif isinstance(m, Envelope):
            m_, d = (int(v) for v in m.anchors.shape)
            arch.append({"type": "envelope", "side": m.side, "anchors": m_, "in": d})
        elif type(m) in names:
            arch.append({"type": names[type(m)]})
        else:
            raise ValueError(f"cannot save a module of type {type(m).__name__}")
    return arch


def save_potential(
    path: str | os.PathLike[str], model: nn.Sequential, metadata: dict[str, Any]
) -> None:
    """Writes the Linear weights (an envelope's anchors and values) as tensors and architecture +
    ``metadata`` as JSON metadata."""
    tensors = {}
    for i, m in enumerate(model):
        if isinstance(m, nn.Linear):
            tensors[f"{i}.weight"] = m.weight.detach().cpu().contiguous()
            tensors[f"{i}.bias"] = m.bias.detach().cpu().contiguous()
        elif isinstance(m, Envelope):
            tensors[f"{i}.anchors"] = m.anchors.detach().cpu().contiguous()
            tensors[f"{i}.values"] = m.values.detach().cpu().contiguous()
            tensors[f"{i}.scales"] = m.scales.detach().cpu().contiguous()
    meta = {"format": FORMAT, "version": json.dumps(VERSION)}
    meta["architecture"] = json.dumps(architecture(model))
    for k, v in metadata.items():
        meta[k] = json.dumps(v)
    save_file(tensors, os.fspath(path), metadata=meta)


def read_potential_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a saved potential, JSON values decoded."""
    with safe_open(os.fspath(path), framework="pt") as fh:
        raw = fh.metadata() or {}
    if raw.get("format") != FORMAT:
        fmt = raw.get("format")
        raise ValueError(f"{os.fspath(path)}: not a lipwass potential (format {fmt!r})")
    out: dict[str, Any] = {}
    for k, v in raw.items():
        try:
            out[k] = json.loads(v) if k != "format" else v
        except json.JSONDecodeError:
            out[k] = v
    return out


def load_potential(path: str | os.PathLike[str]) -> nn.Sequential:
    """Rebuilds the saved potential as a plain nn.Sequential (no gradients required)."""
    meta = read_potential_metadata(path)
    modules: list[nn.Module] = []
    with safe_open(os.fspath(path), framework="pt") as fh:
        for i, spec in enumerate(meta["architecture"]):
            if spec["type"] == "linear":
                w = fh.get_tensor(f"{i}.weight")
                b = fh.get_tensor(f"{i}.bias")
                if tuple(w.shape) != (spec["out"], spec["in"]):
                    raise ValueError(f"layer {i}: weight shape {tuple(w.shape)} != architecture")
                lin = nn.Linear(spec["in"], spec["out"], dtype=w.dtype)
                with torch.no_grad():
                    lin.weight.copy_(w)
                    lin.bias.copy_(b)
                modules.append(lin)
            elif spec["type"] == "envelope":
                anchors = fh.get_tensor(f"{i}.anchors")
                if tuple(anchors.shape) != (spec["anchors"], spec["in"]):
                    raise ValueError(f"layer {i}: anchors {tuple(anchors.shape)} != architecture")
                values, scales = fh.get_tensor(f"{i}.values"), fh.get_tensor(f"{i}.scales")
                modules.append(Envelope(anchors, values, spec["side"], scales))
            elif spec["type"] in ACTIVATIONS:
                modules.append(ACTIVATIONS[spec["type"]]())
            else:
                raise ValueError(f"layer {i}: unknown type {spec['type']!r}")
    return nn.Sequential(*modules).requires_grad_(False)
