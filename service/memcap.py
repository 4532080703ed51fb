"""The memory cap of a job process: ``max_job_memory_bytes`` (plus the interpreter's own share)
as the process's RLIMIT_DATA, so that one job cannot take the machine.

RLIMIT_DATA bounds the private writable memory a process maps (heap, anonymous mmaps: where
numpy and torch put arrays); beyond it an allocation fails (MemoryError, or torch's "can't
allocate memory"), the runner records ``out_of_memory``, and the process ends while the API and
the other jobs go on. Applied to CPU jobs only: the CUDA driver maps large private regions of
its own, and GPU memory is bounded by the card (a CUDA OOM is recorded the same way).
"""

from __future__ import annotations

import logging
import resource

from service.settings import Settings

log = logging.getLogger("lipwass.memcap")

#: Besides the job's own memory: the interpreter, torch, numpy, POT and their libraries (about
#: 0.6 GB of data segment measured after a first estimate) and a margin.
HEADROOM_BYTES = 1024**3


def uses_cuda(settings: Settings) -> bool:
    """Whether jobs of this process run on CUDA (device_count() does not initialise CUDA)."""
    if settings.device is not None:
        return settings.device.startswith("cuda")
    try:
        import torch

        return torch.cuda.device_count() > 0
    except Exception:  # noqa: BLE001 - no usable torch/CUDA: CPU
        return False


def cap_job_process(settings: Settings) -> int | None:
    """Cap this process's data segment for its CPU jobs: the cap in bytes, or None (CUDA)."""
    if uses_cuda(settings):
        return None
    cap = settings.job_memory_limit + HEADROOM_BYTES
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY and hard < cap:
        cap = hard
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    log.debug("job memory capped at %d bytes (RLIMIT_DATA)", cap)
    return cap
