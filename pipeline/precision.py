"""Compute precision: which number format a backbone runs in (``--precision``).

Features are always handed out (and stored) as float32, or float16 with
``--dtype float16``, whatever the compute precision; the store records the
compute precision in its ``precision`` attribute.

``auto`` picks, without running anything:

- ``float16`` on a GPU (tensor cores; Keras' ``mixed_float16``);
- ``bfloat16`` on a CPU only when the CPU has bf16 instructions
  (``/proc/cpuinfo`` flags ``avx512_bf16`` or ``amx_bf16``) *and* the
  backbone is in :data:`BF16_FASTER`, the backbones measured faster in
  bfloat16 on such a CPU;
- ``float32`` otherwise. Without bf16 instructions bfloat16 is emulated and
  slower, and float16 on a CPU is slower still.

A measured table rather than a start-up probe: a probe would need a few
seconds of model time per machine and backbone, be noisy on shared machines,
and could not be checked in a review. Add a backbone to the table when
``scripts/bench_extract.py --precision bfloat16`` shows it faster on a bf16 CPU.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pipeline.errors import BackboneError

PRECISIONS = ("float32", "bfloat16", "float16")
CHOICES = (*PRECISIONS, "auto")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")

# Backbone -> measured speed-up of bfloat16 over float32 on a CPU with AVX-512 BF16 (DESIGN.md).
# Depthwise backbones (MobileNetV2) gained nothing there, so they stay float32 under auto.
BF16_FASTER: dict[str, float] = {"resnet50": 1.49}


@lru_cache(maxsize=1)
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The instruction-set flags of the first CPU (empty where ``/proc/cpuinfo`` does not exist)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def has_bf16(flags: frozenset[str] | None = None) -> bool:
    """True when the CPU has bfloat16 arithmetic instructions."""
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in BF16_FLAGS)


def resolve_precision(requested: str, backbone: str, device: str, flags: frozenset[str] | None = None) -> str:
    """The compute precision for ``requested`` (``auto`` decided for ``backbone`` on ``device``).

    >>> resolve_precision("auto", "resnet50", "GPU x1")
    'float16'
    >>> resolve_precision("auto", "resnet50", "CPU", frozenset({"avx2", "avx512_bf16"}))
    'bfloat16'
    >>> resolve_precision("auto", "mobilenetv2", "CPU", frozenset({"avx2", "avx512_bf16"}))
    'float32'
    >>> resolve_precision("auto", "resnet50", "CPU", frozenset({"avx2"}))
    'float32'
    >>> resolve_precision("bfloat16", "mobilenetv2", "CPU", frozenset())
    'bfloat16'
    """
    if requested not in CHOICES:
        raise BackboneError(f"unknown precision {requested!r}; expected one of {', '.join(CHOICES)}")
    if requested != "auto":
        return requested
    if device.startswith("GPU"):
        return "float16"
    if has_bf16(flags) and backbone in BF16_FASTER:
        return "bfloat16"
    return "float32"
