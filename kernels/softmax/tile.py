"""What one softmax core computes per acquired row, in ``softmax.cc``'s arithmetic: over the row's true
columns (params word 0), subtract the row max, exp in fp32, sum in fp32, multiply by the reciprocal of
the sum; padding columns are written as 0.

``run_cores`` runs every core of a launch on the rows its FIFO delivers, all rows at once.
"""

from __future__ import annotations

import numpy as np


def rows(x: np.ndarray, cols: int) -> np.ndarray:
    """(R, cols_pad) fp32 rows -> softmax over the first ``cols`` columns, zeros after."""
    y = np.zeros_like(x)
    valid = x[:, :cols]
    with np.errstate(invalid="ignore"):
        e = np.exp(valid - valid.max(axis=1, keepdims=True), dtype=np.float32)
        y[:, :cols] = e * (np.float32(1.0) / e.sum(axis=1, keepdims=True, dtype=np.float32))
    return y


def run_cores(flow, streams: dict[str, np.ndarray], spec) -> dict[str, np.ndarray]:
    outputs = {}
    for core in flow.cores:
        params_name, x_name = core.inputs
        cols = int(streams[params_name][0, 0])
        if not 0 < cols <= spec.cols:
            raise ValueError(f"softmax params cols={cols} outside the padded width {spec.cols}")
        outputs[core.outputs[0]] = rows(streams[x_name], cols)
    return outputs
