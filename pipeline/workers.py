"""How many decode threads an extraction needs (``--workers auto``).

Decoding (PIL: JPEG draft-mode decode + bilinear resize) releases the GIL, so
threads decode in parallel. The rule:

- a GPU model takes whatever the decoders can give (an H100 wants 2-4k img/s
  on ResNet50), so every core but one (which feeds the GPU and writes) decodes;
- a CPU model shares the cores with decoding: threads beyond the cores only
  add contention, and the model needs far fewer images per second than a
  thread decodes, so ``ceil(model rate / per-thread decode rate)`` threads with
  a margin, at least 2 (one can wait on the disk while the other decodes)
  and at most the cores.

:data:`DECODE_IMAGES_PER_S_PER_THREAD` was measured on the shared photos
(Dogs vs Cats JPEGs, ~400x350, resized to 224x224) with
``scripts/bench_extract.py``.
"""

from __future__ import annotations

import math
import os

DECODE_IMAGES_PER_S_PER_THREAD = 220.0
MAX_DECODE_THREADS = 32


def available_cpus() -> int:
    """Cores this process may run on (its CPU affinity, which containers and ``taskset`` restrict)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def auto_decode_workers(device: str, model_images_per_s: float | None = None, cpus: int | None = None,
                        per_thread: float = DECODE_IMAGES_PER_S_PER_THREAD) -> int:
    """Decode threads for a model on ``device`` (``CPU`` or ``GPU xN``).

    >>> auto_decode_workers("GPU x1", cpus=16)
    15
    >>> auto_decode_workers("CPU", cpus=2)
    2
    >>> auto_decode_workers("CPU", model_images_per_s=110, cpus=16)
    2
    >>> auto_decode_workers("CPU", model_images_per_s=900, cpus=16)
    6
    """
    cpus = cpus or available_cpus()
    if device.startswith("GPU"):
        return max(1, min(cpus - 1, MAX_DECODE_THREADS))
    needed = 2 if model_images_per_s is None else math.ceil(1.25 * model_images_per_s / per_thread)
    return max(1, min(cpus, max(2, needed), MAX_DECODE_THREADS))


def resolve_workers(requested: int | str, device: str, model_images_per_s: float | None = None,
                    cpus: int | None = None) -> int:
    """``--workers``: ``auto``, or a number capped by the cores (decoders beyond them only contend, and
    each decode process holds a copy of the listing and its own pixels).

    >>> resolve_workers(1000, "CPU", cpus=2), resolve_workers(1, "CPU", cpus=2)
    (2, 1)
    """
    if requested == "auto":
        return auto_decode_workers(device, model_images_per_s, cpus)
    return max(1, min(int(requested), cpus or available_cpus()))
