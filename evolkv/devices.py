"""Where a run computes: ``--device`` and ``--dtype`` checked against this machine before anything loads."""

from __future__ import annotations

import re

from evolkv.errors import EvolKVError

DTYPES = ("auto", "bfloat16", "float16", "float32")
_DEVICE_RE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


def resolve_device(device: str) -> str:
    """``auto`` (the default: the first CUDA device where there is one, else the CPU), ``cpu``, ``cuda`` or
    ``cuda:N``, checked: a CUDA device named that this machine does not have is an error naming what it has,
    never a silent fall back to the CPU."""
    import torch

    if device.strip().lower() == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    match = _DEVICE_RE.match(device.strip().lower())
    if not match or (match.group(1) == "cpu" and match.group(2)):
        raise EvolKVError(f"--device {device!r} is not one of auto, cpu, cuda, cuda:N")
    if match.group(1) == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        raise EvolKVError(f"--device {device}: this machine has no CUDA device (torch {torch.__version__}); "
                          "use --device cpu")
    index = int(match.group(2) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise EvolKVError(f"--device {device}: this machine has {count} CUDA device{'s' * (count != 1)} "
                          f"(cuda:0..cuda:{count - 1})")
    return f"cuda:{index}"


def resolve_dtype(dtype: str, device: str) -> str:
    """The weights' dtype: ``auto`` is bfloat16 on CUDA (float32 matmuls of a 7-8B model waste half the card's
    memory and most of its speed) and float32 on the CPU."""
    dtype = dtype.strip().lower()
    if dtype not in DTYPES:
        raise EvolKVError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if dtype == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    return dtype


def peak_memory_gib(device: str) -> float | None:
    """Peak GPU memory allocated on ``device`` since the process started (None on the CPU)."""
    import torch

    if not device.startswith("cuda"):
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def is_out_of_memory(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()
