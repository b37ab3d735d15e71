"""The process-wide registry of compiled models: how an xdna op body finds its executor and weights.

``xdna_ep.compile`` takes the weights of the nodes it placed on the NPU out of the graph and registers
them here under a fresh key; every xdna node of that model carries the key in its ``model_key``
attribute. Everything that says where and how the work runs belongs to the compiled model: its device
(fixed when it was compiled), its executor (created on first use for that device, the weights made
resident on it once), its per-op statistics and its fallbacks. A ``ReferenceExecutor`` over the same
host arrays is the CPU fallback of every op. ``release`` forgets a model (``xdna_ep.InferenceSession``
releases its own when it is collected); the hooks registered with ``on_release`` drop what other
modules cached for it.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from xdna_ep.ep.executor import Executor, ReferenceExecutor


@dataclass
class OpStats:
    """Calls of one op type and the time spent inside the executor."""

    calls: int = 0
    executor_s: float = 0.0
    fallbacks: int = 0


def _op_stats() -> dict[str, OpStats]:
    from xdna_ep.graph_passes import xdna_ops

    return {op_type: OpStats() for op_type in xdna_ops.OP_TYPES}


@dataclass
class CompiledModel:
    """One compiled model: its weights (host, fp32), device, counters and the pass report."""

    key: str
    weights: dict[str, np.ndarray]  # initializer name -> fp32 array
    device: str  # cpu, sim or npu: where this model's xdna ops run
    profile: str
    precision: str
    report: object = None  # graph_passes.orchestrator.PassReport
    fallbacks: int = 0  # op calls recomputed on the CPU (strict sessions raise on any)
    op_stats: dict[str, OpStats] = field(default_factory=_op_stats)  # op type -> this model's counters
    _executor: Executor | None = field(default=None, repr=False)
    _reference: ReferenceExecutor | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def device_key(self, name: str) -> str:
        """The executor-side key of weight ``name`` (unique across compiled models)."""
        return f"{self.key}/{name}" if name else ""

    @property
    def gemm_plan(self):
        """The GEMM designs this model's NPU nodes run on (``kernels/designs.py``), or None without a report."""
        if self.report is None:
            return None
        from xdna_ep.kernels.designs import plan_session

        return plan_session(self.report)

    def executor(self) -> Executor:
        """The executor of this model's device, with the weights resident (created on first call)."""
        if self._executor is None:
            from xdna_ep.ep.session import make_executor

            with self._lock:
                if self._executor is None:
                    executor = make_executor(self.device, self.profile, self.precision)
                    executor.use_gemm_plan([self.device_key(name) for name in self.weights], self.gemm_plan)
                    for name, array in self.weights.items():
                        executor.add_weight(self.device_key(name), array)
                    self._executor = executor
        return self._executor

    def use_executor(self, executor: Executor) -> None:
        """Bind ``executor`` instead of the device's (tests, benchmarks); the weights are added to it."""
        with self._lock:
            executor.use_gemm_plan([self.device_key(name) for name in self.weights], self.gemm_plan)
            for name, array in self.weights.items():
                executor.add_weight(self.device_key(name), array)
            self._executor = executor

    def reference(self) -> ReferenceExecutor:
        """fp32 NumPy executor over the same weights: the CPU fallback."""
        if self._reference is None:
            with self._lock:
                if self._reference is None:
                    reference = ReferenceExecutor()
                    for name, array in self.weights.items():
                        reference.add_weight(self.device_key(name), array)
                    self._reference = reference
        return self._reference


_MODELS: dict[str, CompiledModel] = {}
_RELEASE_HOOKS: list[Callable[[str], None]] = []


def register(weights: dict[str, np.ndarray], *, device: str, profile: str, precision: str, report=None) -> CompiledModel:
    """Register a compiled model under a fresh key and return it."""
    model = CompiledModel(
        key=uuid.uuid4().hex[:12], weights=weights, device=device, profile=profile, precision=precision, report=report
    )
    _MODELS[model.key] = model
    return model


def lookup(key: str) -> CompiledModel:
    """The compiled model registered under ``key`` (KeyError when this process did not compile it)."""
    return _MODELS[key]


def registered() -> list[str]:
    """The keys of the compiled models this process holds."""
    return list(_MODELS)


def release(key: str) -> None:
    """Forget a compiled model and its weights (its sessions must be gone)."""
    if _MODELS.pop(key, None) is not None:
        for hook in _RELEASE_HOOKS:
            hook(key)


def on_release(hook: Callable[[str], None]) -> None:
    """Call ``hook(key)`` whenever a compiled model is released."""
    _RELEASE_HOOKS.append(hook)


def registered_keys() -> list[str]:
    """The keys of the compiled models alive in this process."""
    return list(_MODELS)
