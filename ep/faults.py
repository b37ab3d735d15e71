"""Faults of the simulated NPU, injected on purpose: the ways the real device fails, at the points
where it fails, so that what xdna-ep does about each one is tested without an NPU.

    from xdna_ep.ep import faults

    with faults.inject("timeout"):                         # every launch ends in ERT_CMD_STATE_TIMEOUT
        session.run(None, feeds)
    with faults.inject("launch_error", after=3, times=1) as fault:   # only the 4th launch fails
        session.run(None, feeds)
    assert fault.fired == 1

``ep/simulated_pyxrt.py`` asks ``trip(point)`` at each point below; the real ``pyxrt`` never does, so
nothing here can touch a run on an NPU.

| fault | point | what the simulated pyxrt does (what the real stack does) |
|---|---|---|
| ``launch_error`` | launch | the run ends in ERT_CMD_STATE_ERROR, the kernel does not run (firmware rejected the command) |
| ``timeout`` | launch | the run ends in ERT_CMD_STATE_TIMEOUT and its outputs hold zeros (the driver kills a job after 2 s without progress and restarts every context) |
| ``no_context`` | hw_context | RuntimeError: no hardware context left (other processes hold all of them) |
| ``device_lost`` | bo, sync, register_xclbin, hw_context, launch | RuntimeError: No such device (the device went away between runs) |
| ``missing_xclbin`` | xclbin | RuntimeError: No such file or directory (the xclbin of a design is not there) |
| ``corrupt_result`` | launch | the run completes but its outputs are wrong (a design that does not do on silicon what it should: a stale sub-buffer, a wrong stride) |

Faults are process-wide, like the simulated machine they act on; ``inject`` is a context manager, so
a test's faults end with its block. ``$XDNA_EP_SIM_FAULT`` injects one for the whole process, to try
a fault from the command line: ``KIND[:AFTER[:TIMES]]``, e.g.

    XDNA_EP_SIM_FAULT=timeout:5:3 xdna-ep transcribe --device sim jfk.wav
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

# fault -> the points of the simulated pyxrt where it can fire
POINTS: dict[str, frozenset[str]] = {
    "launch_error": frozenset({"launch"}),
    "timeout": frozenset({"launch"}),
    "no_context": frozenset({"hw_context"}),
    "device_lost": frozenset({"bo", "sync", "register_xclbin", "hw_context", "launch"}),
    "missing_xclbin": frozenset({"xclbin"}),
    "corrupt_result": frozenset({"launch"}),
}
FAULTS = tuple(POINTS)
FAULT_ENV = "XDNA_EP_SIM_FAULT"  # KIND[:AFTER[:TIMES]]: a fault injected for the whole process


@dataclass
class Fault:
    """One injected fault: it lets ``after`` chances pass, then fires ``times`` times (None: every time)."""

    kind: str
    after: int = 0
    times: int | None = None
    chances: int = 0  # times a point of this fault was reached
    fired: int = 0  # times it fired

    def __post_init__(self) -> None:
        if self.kind not in POINTS:
            raise ValueError(f"unknown fault {self.kind!r}: the simulated NPU can inject {', '.join(FAULTS)}")
        if self.after < 0 or (self.times is not None and self.times < 1):
            raise ValueError(f"fault {self.kind}: after={self.after} must be >= 0 and times={self.times} >= 1 or None")

    def _take(self) -> bool:
        self.chances += 1
        if self.chances <= self.after or (self.times is not None and self.fired >= self.times):
            return False
        self.fired += 1
        return True


_active: list[Fault] = []
_lock = threading.Lock()


@contextlib.contextmanager
def inject(kind: str, *, after: int = 0, times: int | None = None) -> Iterator[Fault]:
    """Make the simulated NPU fail with ``kind`` inside the block (see the module docstring)."""
    fault = Fault(kind, after=after, times=times)
    with _lock:
        _active.append(fault)
    try:
        yield fault
    finally:
        with _lock:
            _active.remove(fault)


def _inject_from_environment() -> None:
    text = os.environ.get(FAULT_ENV, "").strip()
    if not text:
        return
    from xdna_ep.errors import DeviceError

    kind, *numbers = text.split(":")
    try:
        if len(numbers) > 2:
            raise ValueError("too many fields")
        fault = Fault(kind, after=int(numbers[0]) if numbers else 0, times=int(numbers[1]) if len(numbers) > 1 else None)
    except ValueError as error:
        raise DeviceError(f"${FAULT_ENV}={text!r} is not KIND[:AFTER[:TIMES]] with KIND one of {', '.join(FAULTS)}: {error}") from None
    _active.append(fault)


def trip(point: str) -> str | None:
    """The fault that fires at ``point`` now (its kind), or None. Called by the simulated pyxrt only."""
    if not _active:  # the common case: no lock taken
        return None
    with _lock:
        fired = None
        for fault in _active:
            if point in POINTS[fault.kind] and fault._take() and fired is None:
                fired = fault.kind
        return fired


def active() -> list[str]:
    """The kinds of the faults injected right now."""
    with _lock:
        return [fault.kind for fault in _active]


_inject_from_environment()
