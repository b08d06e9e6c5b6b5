"""Numbers from Python, NumPy or torch scalars, as the validation of every setting accepts them."""

from __future__ import annotations

import numbers
from typing import Any

import torch


def is_real(value: Any) -> bool:
    """A real number of any numeric type (``int``, ``float``, ``np.float32``, a 0-dim real tensor), not a bool."""
    if isinstance(value, torch.Tensor):
        return value.dim() == 0 and not (value.is_complex() or value.dtype == torch.bool)
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, _numpy_bool()))


def is_integer(value: Any) -> bool:
    """An integral number of any numeric type (``int``, ``np.int64``, a 0-dim integer tensor), not a bool."""
    if isinstance(value, torch.Tensor):
        return is_real(value) and not value.is_floating_point()
    return isinstance(value, numbers.Integral) and is_real(value)


def _numpy_bool() -> type:
    try:
        import numpy
    except ImportError:  # numpy is optional for torch
        return bool
    return numpy.bool_
