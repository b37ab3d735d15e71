"""The executor interface: what the ``xdna`` custom ops call to do their math.

The custom ops (``ep/ops.py``) never compute themselves; they hand their inputs to the executor bound
to the session that owns the node. Two implementations plug in here:

- ``ReferenceExecutor`` (this file): fp32 NumPy, the kernels' references; used for ``device="cpu"``
  checks and as the CPU fallback of every op.
- ``NpuExecutor`` (``ep/npu_executor.py``): the XRT backend, against the real ``pyxrt`` or the
  simulated NPU; counts launches, bytes and modelled time.

Weights of offloaded nodes are registered once per session with ``add_weight`` and referred to by key
afterwards, so they are converted and made resident once, not copied on every call.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable

import numpy as np


class Executor(ABC):
    """Runs fused xdna nodes. Subclasses must be thread-safe or serialize internally."""

    name: str = "abstract"

    @abstractmethod
    def add_weight(self, key: str, array: np.ndarray) -> None:
        """Make a constant (weight or bias) resident under ``key``; called once per key per session."""

    def use_gemm_plan(self, weight_keys: Iterable[str], plan) -> None:
        """Run the GEMMs of ``weight_keys`` on the designs ``plan`` chose (``kernels/designs.py``'s GemmPlan).

        Called before the weights are added. Executors without NPU designs ignore it.
        """

    @abstractmethod
    def matmul(self, node: str, x: np.ndarray, weight_key: str, bias_key: str, activation: str) -> np.ndarray:
        """y = act(x @ W + b). x: (..., K) float32, W: (K, N) resident, b: (N,) resident or "" for none.

        activation: "" (none) or "gelu" (erf GELU, Whisper's). Returns (..., N) float32.
        """

    @abstractmethod
    def attention(
        self, node: str, q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, causal: bool
    ) -> np.ndarray:
        """softmax(q @ k^T * scale [+ causal mask]) @ v, per head.

        q: (batch, n_head, n_q, head_dim), k and v: (batch, n_head, n_kv, head_dim), all float32.
        causal: query i (of n_q, aligned to the end of the n_kv keys) sees keys 0 .. n_kv - n_q + i.
        Returns (batch, n_head, n_q, head_dim) float32.
        """

    @abstractmethod
    def softmax(self, node: str, x: np.ndarray, axis: int) -> np.ndarray:
        """Softmax of float32 ``x`` along ``axis`` (ONNX opset >= 13 semantics)."""


class ReferenceExecutor(Executor):
    """fp32 NumPy: the math of each fused node as ONNX Runtime's CPU kernels do it.

    GELU and softmax come from the kernels' references (``kernels/matmul/reference.py`` erf GELU,
    ``kernels/softmax/reference.py`` fp32 row softmax); the products are plain fp32 NumPy matmuls.
    Used for ``device="cpu"`` runs of fused graphs, and by every op as its CPU fallback.
    """

    name = "reference"

    def __init__(self) -> None:
        self._weights: dict[str, np.ndarray] = {}

    def add_weight(self, key: str, array: np.ndarray) -> None:
        self._weights[key] = np.ascontiguousarray(array, dtype=np.float32)

    def has_weight(self, key: str) -> bool:
        return key in self._weights

    def matmul(self, node: str, x: np.ndarray, weight_key: str, bias_key: str, activation: str) -> np.ndarray:
        from xdna_ep.kernels.matmul.reference import gelu

        y = np.matmul(x, self._weights[weight_key])
        if bias_key:
            y += self._weights[bias_key]
        if activation == "gelu":
            y = gelu(y)
        elif activation:
            raise ValueError(f"{node}: unknown activation {activation!r}")
        return y

    def attention(
        self, node: str, q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, causal: bool
    ) -> np.ndarray:
        from xdna_ep.kernels.softmax.reference import softmax_rows

        scores = np.matmul(q, np.swapaxes(k, -1, -2))  # (batch, n_head, n_q, n_kv)
        scores *= np.float32(scale)
        if causal:
            n_q, n_kv = scores.shape[-2:]
            hidden = np.arange(n_kv)[None, :] > (n_kv - n_q + np.arange(n_q))[:, None]
            scores[..., hidden] = -np.inf
        return np.matmul(softmax_rows(scores), v)

    def softmax(self, node: str, x: np.ndarray, axis: int) -> np.ndarray:
        from xdna_ep.kernels.softmax.reference import softmax_rows

        moved = np.moveaxis(x, axis, -1)
        return np.moveaxis(softmax_rows(moved), -1, axis)
