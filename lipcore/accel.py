"""Device and precision helpers for the training loop: the GPU levers of EstimatorConfig.

- ``precision``: "float32" (plain), "tf32" (TF32 matrix products on CUDA, scoped to training; a
  no-op on a CPU), "bf16" (torch.autocast to bfloat16 around the training forward; CPUs too).
  Soundness does not depend on it: the certificate is computed after training, in float64, from the
  exported weights.
- ``compile``: torch.compile of the training forward (+ its backward, through AOTAutograd). If it
  cannot compile (no C compiler, an unsupported op), training falls back to eager with a warning.
- ``cuda_graphs``: on CUDA, the compiled step runs in CUDA graphs (torch.compile's
  "reduce-overhead" mode: the forward and backward replayed as graphs, one launch each). Ignored,
  with a warning, on other devices.

Also where an estimate runs: ``default_device`` and ``resolve_device``. (The float64 evaluation of
data that already lives on the card is lipcore.evaluate on a device tensor: chunked, so that no
float64 copy of the whole set is ever made.)
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

from .errors import ConfigError

log = logging.getLogger("lipcore.accel")

PRECISIONS = ("float32", "tf32", "bf16")


def default_device() -> torch.device:
    """The device an estimate runs on when none is given: CUDA if this process sees a GPU, else
    the CPU. The one place that decides it (library, service and benchmarks all ask here)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch.device (None: ``default_device()``); "cuda" gets its index. A
    ValueError for a malformed name or CUDA asked where there is none."""
    if device is None:
        device = default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device: {exc}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device: CUDA requested but not available")
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        dev = torch.device("cuda", index)
    return dev


def check_precision(precision: object) -> str:
    """The precision name, or a ConfigError naming the allowed ones."""
    if precision not in PRECISIONS:
        raise ConfigError(
            "precision",
            f"config.precision: must be one of {list(PRECISIONS)}, got {precision!r}",
        )
    return str(precision)


@contextlib.contextmanager
def training_precision(precision: str, device: torch.device) -> Iterator[None]:
    """Scope of the whole training loop: enables TF32 matrix products on CUDA for "tf32" and
    restores the previous global settings afterwards (also on an exception)."""
    if precision != "tf32" or device.type != "cuda":
        yield
        return
    old_matmul = torch.backends.cuda.matmul.allow_tf32
    old_cudnn = torch.backends.cudnn.allow_tf32
    old_precision = torch.get_float32_matmul_precision()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old_matmul
        torch.backends.cudnn.allow_tf32 = old_cudnn
        torch.set_float32_matmul_precision(old_precision)


def forward_autocast(
    precision: str, device: torch.device
) -> contextlib.AbstractContextManager[None]:
    """The context of each training forward: bfloat16 autocast for "bf16", else nothing."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def use_cuda_graphs(requested: bool, device: torch.device) -> bool:
    """Whether CUDA graphs apply: only on CUDA; a request elsewhere is ignored with a warning."""
    if requested and device.type != "cuda":
        msg = f"config.cuda_graphs ignored on device {device.type!r} (CUDA only)"
        log.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        return False
    return bool(requested)


class CompiledStep:
    """``fn`` compiled with torch.compile, falling back to eager ``fn`` for good (with a logged
    warning) when a call of the compiled function fails; a genuine error then recurs in eager.
    With ``graphs``: mode "reduce-overhead" (CUDA graphs) and a step marker before each call."""

    def __init__(self, fn: Callable[..., Any], graphs: bool = False) -> None:
        self.eager = fn
        self.graphs = graphs
        self.compiled: Callable[..., Any] | None = torch.compile(
            fn, mode="reduce-overhead" if graphs else None, dynamic=False
        )
        self.calls = 0
        self.fell_back = False

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        if self.compiled is None:
            return self.eager(*args)
        if self.graphs:
            torch.compiler.cudagraph_mark_step_begin()  # type: ignore[no-untyped-call]
        try:  # a recompilation (new shapes, new architecture) can fail too, not only the first
            return self.compiled(*args)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: train eagerly instead
            msg = f"torch.compile failed, training eagerly instead: {type(exc).__name__}: {exc}"
            log.warning(msg[:2000])
            warnings.warn(msg[:500], RuntimeWarning, stacklevel=2)
            self.compiled, self.fell_back = None, True
            return self.eager(*args)


def sync(device: torch.device | str) -> None:
    """Waits for the device's queued work (for timing); nothing on a CPU."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
