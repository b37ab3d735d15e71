"""Statistics of the NPU executors: launches, bytes each way, modelled device time, host overhead,
design switches, fallbacks with their causes, per node.

Each ``NpuExecutor`` owns an ``ExecutorStats``; ``snapshot()`` gathers every live one of the process
into one JSON-ready dict (what ``transcribe --device sim|npu`` prints and writes into its json output),
``summary(snapshot())`` gives the one-line version, ``reset()`` zeroes the counters between passes.

Times: ``modelled_device_s`` is the cost model's time on the profile's NPU (launch + transfers +
compute + design switches), the same on the simulator and on a real device; ``device_wall_s`` is the
measured wall time of kernel() + wait() (the NumPy reference on the simulator, the NPU on a real
one); ``host_s`` is the rest of the executor's wall time (conversion to bf16, copies, bookkeeping).
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class NodeStats:
    """Counters of one fused node."""

    kind: str  # "matmul", "attention", "softmax"
    calls: int = 0
    launches: int = 0
    bytes_to_device: int = 0
    bytes_from_device: int = 0
    modelled_device_s: float = 0.0
    device_wall_s: float = 0.0
    host_s: float = 0.0
    design_switches: int = 0
    fallbacks: Counter = field(default_factory=Counter)  # cause -> count
    design: str = ""

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "design": self.design,
            "calls": self.calls,
            "launches": self.launches,
            "bytes_to_device": self.bytes_to_device,
            "bytes_from_device": self.bytes_from_device,
            "modelled_device_s": self.modelled_device_s,
            "device_wall_s": self.device_wall_s,
            "host_s": self.host_s,
            "design_switches": self.design_switches,
            "fallbacks": dict(self.fallbacks),
        }


_TOTAL_FIELDS = (
    "calls",
    "launches",
    "bytes_to_device",
    "bytes_from_device",
    "modelled_device_s",
    "device_wall_s",
    "host_s",
    "design_switches",
)


class ExecutorStats:
    """The counters of one executor, per node; thread-safe."""

    def __init__(self, device: str, profile: str, precision: str) -> None:
        self.device = device
        self.profile = profile
        self.precision = precision
        self._lock = threading.Lock()
        self.nodes: dict[str, NodeStats] = {}
        self.weight_bytes_to_device = 0  # weights made resident (once per session)
        self.weights_resident = 0
        _LIVE.add(self)

    def _node(self, node: str, kind: str) -> NodeStats:
        stats = self.nodes.get(node)
        if stats is None:
            stats = self.nodes[node] = NodeStats(kind=kind)
        return stats

    def record_call(
        self,
        node: str,
        kind: str,
        *,
        design: str,
        launches: int,
        bytes_to_device: int,
        bytes_from_device: int,
        modelled_device_s: float,
        device_wall_s: float,
        host_s: float,
        design_switches: int,
    ) -> None:
        with self._lock:
            stats = self._node(node, kind)
            stats.design = design
            stats.calls += 1
            stats.launches += launches
            stats.bytes_to_device += bytes_to_device
            stats.bytes_from_device += bytes_from_device
            stats.modelled_device_s += modelled_device_s
            stats.device_wall_s += device_wall_s
            stats.host_s += host_s
            stats.design_switches += design_switches

    def record_fallback(self, node: str, kind: str, cause: str) -> None:
        with self._lock:
            self._node(node, kind).fallbacks[cause] += 1

    def record_weight(self, nbytes: int) -> None:
        with self._lock:
            self.weight_bytes_to_device += nbytes
            self.weights_resident += 1

    def reset(self) -> None:
        """Zero the per-call counters (resident weights stay counted: they were sent once)."""
        with self._lock:
            self.nodes.clear()

    def totals(self) -> dict:
        with self._lock:
            totals = {name: 0 for name in _TOTAL_FIELDS}
            fallbacks: Counter = Counter()
            for stats in self.nodes.values():
                for name in _TOTAL_FIELDS:
                    totals[name] += getattr(stats, name)
                fallbacks.update(stats.fallbacks)
            totals["nodes"] = len(self.nodes)
            totals["fallbacks"] = sum(fallbacks.values())
            totals["fallback_causes"] = dict(fallbacks)
            return totals

    def as_dict(self) -> dict:
        totals = self.totals()
        with self._lock:
            return {
                "device": self.device,
                "profile": self.profile,
                "precision": self.precision,
                "weight_bytes_to_device": self.weight_bytes_to_device,
                "weights_resident": self.weights_resident,
                "totals": totals,
                "nodes": {name: stats.as_dict() for name, stats in self.nodes.items()},
            }


_LIVE: weakref.WeakSet[ExecutorStats] = weakref.WeakSet()


def _op_fallbacks() -> dict[str, int]:
    """Fallbacks the xdna ops counted ("<op>: <cause>" -> calls), if the op library is loaded."""
    ops = sys.modules.get("xdna_ep.ep.ops")  # never import it here: it pulls in onnxruntime-extensions
    if ops is None:
        return {}
    return {f"{op_type}: {cause}": count for (op_type, cause), count in ops.fallback_counts().items()}


def snapshot() -> dict:
    """Every live executor's statistics, and their sum: a JSON-ready dict.

    The totals' fallbacks include the op calls the xdna ops recomputed on the CPU (``ep/ops.py``
    counts them: an executor that failed cannot).
    """
    executors = [stats.as_dict() for stats in list(_LIVE)]
    total = {name: 0 for name in _TOTAL_FIELDS}
    total.update(fallbacks=0, nodes=0, weight_bytes_to_device=0)
    causes: Counter = Counter()
    for entry in executors:
        for name in _TOTAL_FIELDS:
            total[name] += entry["totals"][name]
        total["fallbacks"] += entry["totals"]["fallbacks"]
        total["nodes"] += entry["totals"]["nodes"]
        total["weight_bytes_to_device"] += entry["weight_bytes_to_device"]
        causes.update(entry["totals"]["fallback_causes"])
    op_fallbacks = _op_fallbacks()
    causes.update(op_fallbacks)
    total["fallbacks"] += sum(op_fallbacks.values())
    total["fallback_causes"] = dict(causes)
    return {"executors": executors, "totals": total}


def since(before: dict) -> dict:
    """Totals of the work done since ``before`` (an earlier ``snapshot()``): a JSON-ready dict.

    Per-transcription numbers without resetting counters other callers may be reading. The device,
    profile and precision are those of the executor that made the most calls since ``before`` (other
    executors of the process may be alive, each with its own precision).
    """
    now = snapshot()
    totals = {}
    for name, value in now["totals"].items():
        earlier = before["totals"].get(name)
        if isinstance(value, (int, float)):
            totals[name] = value - (earlier or 0)
        elif isinstance(value, dict):
            earlier = earlier or {}
            totals[name] = {key: count - earlier.get(key, 0) for key, count in value.items() if count != earlier.get(key, 0)}
    calls_now, calls_before = _calls_by_label(now), _calls_by_label(before)
    busiest = max(calls_now, key=lambda label: calls_now[label] - calls_before.get(label, 0), default=(None,) * 3)
    label = dict(zip(("device", "profile", "precision"), busiest))
    return {**label, "totals": totals, "executors": []}


def _calls_by_label(data: dict) -> dict[tuple, int]:
    """Calls per (device, profile, precision) of a snapshot: which executor did the work since another."""
    calls: Counter = Counter()
    for entry in data["executors"]:
        calls[(entry["device"], entry["profile"], entry["precision"])] += entry["totals"]["calls"]
    return calls


def reset() -> None:
    """Zero the per-call counters of every live executor."""
    for stats in list(_LIVE):
        stats.reset()


def summary(data: dict | None = None) -> str:
    """One line: launches, fallbacks, bytes, modelled device time, host overhead."""
    data = snapshot() if data is None else data
    total = data["totals"]
    first = data["executors"][0] if data["executors"] else data
    if not first.get("device") or not total.get("calls"):
        return "npu: no xdna node ran on an NPU executor"
    label = f"{first['device']} {first['profile']} {first['precision']}"
    causes = ", ".join(f"{cause} x{count}" for cause, count in total["fallback_causes"].items())
    return (
        f"npu ({label}): {total['calls']} calls on {total['nodes']} nodes, {total['launches']} launches, "
        f"{total['design_switches']} design switches, {total['bytes_to_device'] / 1e6:.1f} MB to / "
        f"{total['bytes_from_device'] / 1e6:.1f} MB from the device, modelled device time "
        f"{total['modelled_device_s'] * 1e3:.1f} ms, host overhead {total['host_s'] * 1e3:.1f} ms, "
        f"{total['fallbacks']} fallbacks" + (f" ({causes})" if causes else "")
    )
