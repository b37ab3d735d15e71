"""NumPy reference of the softmax design: the numerics contract of ``softmax.cc`` and the simulated NPU.

fp32 throughout (the precision setting does not change it): subtract the row max, exp, sum in fp32,
multiply by the reciprocal of the sum. A row of all -inf gives NaN, as ONNX Runtime's CPU kernel does.
"""

from __future__ import annotations

import numpy as np

from xdna_ep.kernels.softmax.spec import PARAMS_WORDS


def prepare_params(cols: int) -> np.ndarray:
    params = np.zeros(PARAMS_WORDS, dtype=np.float32)
    params[0] = cols
    return params


def softmax_rows(x: np.ndarray) -> np.ndarray:
    """Row softmax of a (rows, cols) fp32 matrix, fp32 statistics."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        shifted = x - x.max(axis=-1, keepdims=True)
        e = np.exp(shifted, dtype=np.float32)
        return e * (np.float32(1.0) / e.sum(axis=-1, keepdims=True, dtype=np.float32))


def run_on_device(x: np.ndarray, params: np.ndarray, rows: int, cols_pad: int) -> np.ndarray:
    """What the array computes for one launch: y (rows, cols_pad) fp32; padding columns are 0."""
    cols = int(params[0])
    if not 0 < cols <= cols_pad:
        raise ValueError(f"softmax params cols={cols} outside the padded width {cols_pad}")
    x = x[: rows * cols_pad].reshape(rows, cols_pad)
    y = np.zeros((rows, cols_pad), dtype=np.float32)
    y[:, :cols] = softmax_rows(x[:, :cols])
    return y


def softmax_reference(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax of fp32 ``x`` along ``axis`` as the NPU computes it."""
    moved = np.moveaxis(np.asarray(x, dtype=np.float32), axis, -1)
    y = softmax_rows(moved.reshape(-1, moved.shape[-1])).reshape(moved.shape)
    return np.moveaxis(y, -1, axis)
