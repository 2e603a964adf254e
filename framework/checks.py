"""Type checks that config validation shares: Python's ``True`` is an int, a config's is not.

YAML and Hydra give plain ints and floats; numpy scalars come from code that computes a value.
"""
from __future__ import annotations

import numpy as np


def is_int(value) -> bool:
    """An integer (numpy's too) that is not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_number(value) -> bool:
    """An int or float (numpy's too) that is not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
