"""Mixed precision: the ``--amp`` choices and the autocast context they mean (one table for every program)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Optional, Union

import torch

__all__ = ["AMP_DTYPES", "autocast"]

# --amp name -> autocast dtype; fp16 also needs a GradScaler (bf16 has fp32's exponent range and does not).
AMP_DTYPES: dict[str, Optional[torch.dtype]] = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def autocast(device: torch.device, amp: Union[str, Optional[torch.dtype]]) -> AbstractContextManager:
    """``torch.autocast`` for ``device`` with ``amp`` (an :data:`AMP_DTYPES` name or a dtype); none: a no-op."""
    dtype = AMP_DTYPES[amp] if isinstance(amp, str) else amp
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else nullcontext()
