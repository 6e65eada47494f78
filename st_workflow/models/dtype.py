"""Which floating-point type to run a model in: ``auto | float32 | bfloat16``, detected, never assumed.

bf16 autocast halves the memory traffic of every matmul; it is only *faster* where the hardware has bf16 dot
products (x86 ``avx512_bf16`` / ``amx_bf16``, Arm ``bf16``, a CUDA GPU with bf16 support). On other CPUs PyTorch
emulates bf16 and it is slower than fp32, so ``auto`` falls back to fp32 there. Master weights always stay fp32;
``bfloat16`` only autocasts the forward pass.

Example:
    >>> resolve_dtype("float32", "cpu")
    'float32'
    >>> with autocast("float32", "cpu"):
    ...     pass
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

DTypeChoice = Literal["auto", "float32", "bfloat16"]
DTYPES = ("auto", "float32", "bfloat16")
_FAST_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 dot products natively (Linux ``/proc/cpuinfo`` flags; Arm ``bf16``)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return fast_bf16_in_cpuinfo(text)


def fast_bf16_in_cpuinfo(text: str) -> bool:
    """Whether a ``/proc/cpuinfo`` text lists native bf16 (x86 ``avx512_bf16``/``amx_bf16``, Arm ``bf16``).

    Example:
        >>> fast_bf16_in_cpuinfo("flags : fpu avx2 avx512_bf16"), fast_bf16_in_cpuinfo("flags : fpu avx2")
        (True, False)
    """
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in {"flags", "Features"}:
            flags = set(value.split())
            if flags & _FAST_BF16_FLAGS or "bf16" in flags:
                return True
    return False


def resolve_dtype(choice: str, device: str | None = None) -> Literal["float32", "bfloat16"]:
    """The dtype ``choice`` means on ``device`` (``cpu``, ``cuda``, ``cuda:1``...; unset: CUDA when available).

    Raises:
        ValueError: an unknown choice.
    """
    if choice not in DTYPES:
        raise ValueError(f"unknown dtype {choice!r}; choose one of {DTYPES}")
    if choice != "auto":
        return choice  # type: ignore[return-value]
    import torch

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dev.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if cpu_has_fast_bf16() else "float32"


@contextlib.contextmanager
def autocast(dtype: str, device: str | None = None) -> Iterator[None]:
    """``torch.autocast`` to bf16 on ``device`` when ``dtype`` resolves to ``bfloat16``; a no-op for fp32."""
    resolved = resolve_dtype(dtype, device)
    if resolved == "float32":
        yield
        return
    import torch

    kind = "cuda" if (device or "").startswith("cuda") else "cpu"
    with torch.autocast(kind, dtype=torch.bfloat16):
        yield
