"""A simulated AMD XDNA NPU behind pyxrt's API: same module-level classes, methods and enums as XRT's
``pyxrt`` (``device``, ``xclbin``, ``hw_context``, ``kernel``, ``bo``, ``run``, ``runlist``,
``xclBOSyncDirection``, ``ert_cmd_state``), so ``ep/xrt_backend.py`` runs unchanged on it.

It enforces what the device and XRT enforce, and raises ``RuntimeError`` (what pyxrt raises) with a
message naming the problem where the real stack would crash, hang, or silently compute garbage:

- a buffer object has a host copy and a device copy; ``sync`` copies between them and is the only way
  across. A kernel reading an input whose host copy was changed after its last sync to the device is an
  error (forgotten sync); a kernel's output is visible on the host only after a sync from the device
  (until then ``read`` raises and the mapped host copy holds NaN bytes);
- launch arguments are checked against the xclbin: opcode 3, the instruction buffer on the instruction
  group id, exactly the declared buffers on their group ids, each large enough for the shape the
  instruction stream encodes; a missing, unsynced or foreign instruction stream is an error, and so is
  a GEMM instruction stream whose K is not the K a static-K design was built for (the device would
  silently compute garbage); a dynamic-K design takes any K that is a multiple of its per-core k;
- unknown kernel names and missing or non-simulated xclbin files are errors; ``device.load_xclbin`` is
  not supported on the NPU (npu.md);
- hardware contexts are limited system-wide (6 on npu1, 16 on npu2); a launch that would run past the
  driver's job timeout ends in ``ERT_CMD_STATE_TIMEOUT`` with zeros in its outputs;
- the faults of ``ep/faults.py`` (launch error, timeout, no hardware context, device lost, missing
  xclbin) fire where a test injects them.

A launch executes the design's dataflow on the device copies (``ep/design_sim.py``): the runtime
sequence's access patterns gather from and scatter to the buffers, objects pass through the memtile
links of the design's description (``kernels/<kind>/design.py``: ``describe``), and each core runs its
per-tile model (``kernels/<kind>/tile.py``). The op references are not called here; they are the
oracle the tests compare with. Every launch, sync and design switch is recorded in the ledger of the
simulated machine, with a modelled time from the same description (``_modelled_time``: the timing walk
of ``kernels/timing.py`` over the flow the launch executes, with each kernel's cycles per call from its
``kernels/<kind>/cycles.py``; the partitioner's cost model runs the same walk).

Simulated xclbins are JSON files generated from the kernel specs (``kernels/artifacts.py``); the real
ones are binary and load only into the real pyxrt.
"""

from __future__ import annotations

import contextlib
import enum
import json
import threading
import weakref
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xdna_ep.ep import cost_model, faults
from xdna_ep.ep.device import DEFAULT_PROFILE, DeviceProfile, get_profile
from xdna_ep.kernels import artifacts

SIMULATED = True  # pyxrt has no such attribute: it tells the backend which binding it holds

XCL_BO_FLAGS_NONE = 0
_POISON = 0xFF  # host bytes of an output not synced back yet: NaN as fp32 and as bf16


class xclBOSyncDirection(enum.IntEnum):  # noqa: N801 - pyxrt's spelling
    XCL_BO_SYNC_BO_TO_DEVICE = 0
    XCL_BO_SYNC_BO_FROM_DEVICE = 1
    XCL_BO_SYNC_BO_GMIO_TO_AIE = 2
    XCL_BO_SYNC_BO_AIE_TO_GMIO = 3


class ert_cmd_state(enum.IntEnum):  # noqa: N801 - pyxrt's spelling; values of XRT's ert.h
    ERT_CMD_STATE_NEW = 1
    ERT_CMD_STATE_QUEUED = 2
    ERT_CMD_STATE_RUNNING = 3
    ERT_CMD_STATE_COMPLETED = 4
    ERT_CMD_STATE_ERROR = 5
    ERT_CMD_STATE_ABORT = 6
    ERT_CMD_STATE_SUBMITTED = 7
    ERT_CMD_STATE_TIMEOUT = 8
    ERT_CMD_STATE_NORESPONSE = 9
    ERT_CMD_STATE_SKERROR = 10
    ERT_CMD_STATE_SKCRASHED = 11


class xrt_info_device(enum.IntEnum):  # noqa: N801 - pyxrt's spelling
    bdf = 0
    name = 2
    max_clock_frequency_mhz = 5


@dataclass
class LaunchRecord:
    """One launch as the simulated device saw it."""

    design: str
    kind: str
    shape: tuple[int, ...]
    modelled_s: float  # launch + compute (+ design switch when there was one)
    switched_design: bool
    state: str


@dataclass
class Ledger:
    """What the simulated machine did since it was created or last reset."""

    launches: int = 0
    bytes_to_device: int = 0
    bytes_from_device: int = 0
    design_switches: int = 0
    contexts_created: int = 0
    xclbins_registered: int = 0
    modelled_s: float = 0.0  # launches, compute, transfers, switches, context creation
    records: deque[LaunchRecord] = field(default_factory=lambda: deque(maxlen=4096))  # the latest launches

    def as_dict(self) -> dict:
        return {
            "launches": self.launches,
            "bytes_to_device": self.bytes_to_device,
            "bytes_from_device": self.bytes_from_device,
            "design_switches": self.design_switches,
            "contexts_created": self.contexts_created,
            "xclbins_registered": self.xclbins_registered,
            "modelled_s": self.modelled_s,
        }


class SimulatedNpu:
    """The simulated machine: one per process, like the NPU is one per system."""

    def __init__(self, profile: str = DEFAULT_PROFILE) -> None:
        self.lock = threading.RLock()
        self.profile: DeviceProfile = get_profile(profile)
        self.ledger = Ledger()
        self.live_contexts: weakref.WeakSet[hw_context] = weakref.WeakSet()  # open until garbage
        self.loaded_design: str | None = None  # design the array is configured with
        self.in_runlist = False  # True while a runlist executes its runs

    def configure(self, profile: str | DeviceProfile) -> None:
        """Choose which NPU is simulated (a name, or a DeviceProfile for tests); only while no context is open."""
        with self.lock:
            if self.live_contexts and get_profile(profile) != self.profile:
                raise RuntimeError(
                    f"simulated NPU: cannot switch to {get_profile(profile).name} while {len(self.live_contexts)} hardware "
                    f"context(s) of {self.profile.name} are open"
                )
            self.profile = get_profile(profile)

    def reset_ledger(self) -> Ledger:
        """Start a new ledger and return the old one."""
        with self.lock:
            old, self.ledger = self.ledger, Ledger()
            return old

    def _record_transfer(self, nbytes: int, to_device: bool) -> None:
        with self.lock:
            if to_device:
                self.ledger.bytes_to_device += nbytes
            else:
                self.ledger.bytes_from_device += nbytes
            self.ledger.modelled_s += cost_model.transfer_s(self.profile, nbytes)


_NPU = SimulatedNpu()


def simulated_npu() -> SimulatedNpu:
    """The simulated machine of this process (its profile, ledger and open contexts)."""
    return _NPU


@contextlib.contextmanager
def separate_machine(profile: str | DeviceProfile = DEFAULT_PROFILE) -> Iterator[SimulatedNpu]:
    """Within the block, ``device(0)`` opens a new simulated machine (own contexts, ledger, profile).

    For tests that need a machine of their own; objects made inside keep using it afterwards.
    """
    global _NPU
    previous, _NPU = _NPU, SimulatedNpu(get_profile(profile).name)
    _NPU.profile = get_profile(profile)
    try:
        yield _NPU
    finally:
        _NPU = previous


def _check_device(what: str, point: str | None = None) -> str | None:
    """Raise as XRT does once the device is gone (injected ``device_lost``); else the fault firing at
    ``point`` (default ``what``), if any, for the caller to act on."""
    fault = faults.trip(point or what)
    if fault == "device_lost":
        raise RuntimeError(f"{what}: No such device: the NPU is gone (injected fault)")
    return fault


def enumerate_devices() -> int:
    return 1


class uuid:  # noqa: N801 - pyxrt's spelling
    def __init__(self, uuid_str: str) -> None:
        self._text = str(uuid_str)

    def to_string(self) -> str:
        return self._text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, uuid) and other._text == self._text

    def __hash__(self) -> int:
        return hash(self._text)


class xclbin:  # noqa: N801 - pyxrt's spelling
    """A simulated xclbin file (JSON written by ``kernels/artifacts.py``)."""

    class xclbinkernel:  # noqa: N801
        def __init__(self, description: dict | None = None) -> None:
            self._description = description or {"name": "", "args": []}

        def get_name(self) -> str:
            return self._description["name"]

        def get_num_args(self) -> int:
            return len(self._description["args"])

    def __init__(self, filename: str) -> None:
        path = Path(filename)
        if faults.trip("xclbin") == "missing_xclbin":
            raise RuntimeError(f"xclbin {path}: No such file or directory (injected fault)")
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise RuntimeError(f"xclbin {path}: No such file or directory") from None
        except UnicodeDecodeError:
            raise RuntimeError(
                f"xclbin {path} is a binary (real) xclbin: the simulated NPU loads only the simulated "
                f"xclbins generated from the kernel specs"
            ) from None
        try:
            manifest = json.loads(text)
        except json.JSONDecodeError as error:
            raise RuntimeError(f"xclbin {path} is not a valid simulated xclbin: {error}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != artifacts.SIM_XCLBIN_FORMAT:
            raise RuntimeError(f"xclbin {path} is not a simulated xclbin (its 'format' field is wrong)")
        self.path = path
        self.manifest = manifest
        self._uuid = uuid(manifest["uuid"])

    def get_kernels(self) -> list[xclbin.xclbinkernel]:
        return [xclbin.xclbinkernel(k) for k in self.manifest["kernels"]]

    def get_uuid(self) -> uuid:
        return self._uuid

    def get_xsa_name(self) -> str:
        return f"xdna-ep simulated {self.manifest['params'].get('profile', '?')}"


class device:  # noqa: N801 - pyxrt's spelling
    def __init__(self, index: int | str = 0) -> None:
        if index not in (0, "0"):
            raise RuntimeError(f"device index {index} out of range: the simulated system has one NPU (index 0)")
        self._npu = _NPU
        self._registered: dict[uuid, xclbin] = {}

    def register_xclbin(self, image: xclbin) -> uuid:
        _check_device("register_xclbin")
        profile = image.manifest["params"].get("profile")
        if profile != self._npu.profile.name:
            raise RuntimeError(
                f"xclbin {image.path.name} was built for {profile}, this (simulated) NPU is {self._npu.profile.name}"
            )
        with self._npu.lock:
            self._registered[image.get_uuid()] = image
            self._npu.ledger.xclbins_registered += 1
            self._npu.ledger.modelled_s += self._npu.profile.xclbin_load_s
        return image.get_uuid()

    def load_xclbin(self, *_args) -> uuid:
        raise RuntimeError("load_xclbin: Operation not supported (the NPU needs register_xclbin + hw_context)")

    def get_info(self, key: xrt_info_device) -> str:
        if key == xrt_info_device.name:
            return self._npu.profile.xrt_names[0]  # what XRT reports for this generation
        if key == xrt_info_device.bdf:
            return "0000:00:00.0"
        if key == xrt_info_device.max_clock_frequency_mhz:
            return str(int(self._npu.profile.core_clock_hz / 1e6))
        raise RuntimeError(f"get_info({key!r}) is not available on the simulated NPU")


class hw_context:  # noqa: N801 - pyxrt's spelling
    def __init__(self, dev: device, xclbin_uuid: uuid) -> None:
        image = dev._registered.get(xclbin_uuid)
        if image is None:
            raise RuntimeError(f"hw_context: xclbin {xclbin_uuid.to_string()} is not registered with the device")
        npu = dev._npu
        if _check_device("hw_context") == "no_context":
            raise RuntimeError(
                f"hw_context: no hardware context left: other processes hold all {npu.profile.hw_contexts} of "
                f"{npu.profile.name} (injected fault)"
            )
        with npu.lock:
            limit = npu.profile.hw_contexts
            if len(npu.live_contexts) >= limit:
                names = ", ".join(c.xclbin.manifest["name"] for c in npu.live_contexts)
                raise RuntimeError(
                    f"hw_context: no hardware context left: {npu.profile.name} has {limit} system-wide, all "
                    f"in use ({names})"
                )
            npu.live_contexts.add(self)
            npu.ledger.contexts_created += 1
            npu.ledger.modelled_s += npu.profile.context_create_s
        self.device = dev
        self.xclbin = image
        self._npu = npu

    def get_xclbin_uuid(self) -> uuid:
        return self.xclbin.get_uuid()

    def __del__(self) -> None:
        npu = getattr(self, "_npu", None)
        if npu is not None and npu.loaded_design == self.xclbin.manifest["name"]:
            npu.loaded_design = None  # the array has to be configured again (the WeakSet forgets self)


class bo:  # noqa: N801 - pyxrt's spelling
    """A buffer object: a host copy and a device copy, joined only by ``sync``."""

    class flags(enum.IntEnum):  # noqa: N801 - values of XRT's xrt_bo.h
        normal = 0
        cacheable = 1 << 24
        svm = 1 << 27
        device_only = 1 << 28
        host_only = 1 << 29
        p2p = 1 << 30

    normal = flags.normal
    cacheable = flags.cacheable
    svm = flags.svm
    device_only = flags.device_only
    host_only = flags.host_only
    p2p = flags.p2p

    def __init__(self, dev: device | hw_context, size: int, flags: bo.flags, group: int) -> None:
        if isinstance(dev, hw_context):
            dev = dev.device
        size = int(size)
        if size <= 0:
            raise RuntimeError(f"bo: size {size} must be positive")
        _check_device("bo")
        self._npu = dev._npu
        self.flags_value = int(flags)
        self.group = int(group)
        self.host = np.zeros(size, dtype=np.uint8)
        self.device_copy = np.zeros(size, dtype=np.uint8)
        self.written_by_kernel = False  # the last writer of the device copy was a kernel (not a sync)
        self.stale: tuple[int, int] | None = None  # bytes a kernel wrote that were not synced back yet

    def size(self) -> int:
        return self.host.size

    def address(self) -> int:
        return self.host.ctypes.data

    def map(self) -> memoryview:
        return memoryview(self.host)

    def write(self, data, seek: int = 0) -> None:
        raw = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
        if seek < 0 or seek + raw.size > self.host.size:
            raise RuntimeError(f"bo.write: {raw.size} bytes at offset {seek} overflow a {self.host.size}-byte buffer")
        self.host[seek : seek + raw.size] = raw

    def read(self, size: int, skip: int = 0) -> np.ndarray:
        if skip < 0 or skip + size > self.host.size:
            raise RuntimeError(f"bo.read: {size} bytes at offset {skip} overflow a {self.host.size}-byte buffer")
        if self.stale is not None and skip < self.stale[1] and skip + size > self.stale[0]:
            raise RuntimeError(
                "bo.read: a kernel wrote this buffer and it was not synced from the device "
                "(missing bo.sync(XCL_BO_SYNC_BO_FROM_DEVICE)): the host copy is stale"
            )
        return self.host[skip : skip + size].view(np.int8).copy()

    def sync(self, direction: xclBOSyncDirection, size: int | None = None, offset: int = 0) -> None:
        _check_device("bo.sync", point="sync")
        size = self.host.size - offset if size is None else int(size)
        if offset < 0 or size < 0 or offset + size > self.host.size:
            raise RuntimeError(f"bo.sync: {size} bytes at offset {offset} overflow a {self.host.size}-byte buffer")
        window = slice(offset, offset + size)
        if direction == xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE:
            self.device_copy[window] = self.host[window]
            self.written_by_kernel = False
            if self.stale is not None and offset <= self.stale[0] and self.stale[1] <= offset + size:
                self.stale = None  # the host rewrote what the kernel had produced
            self._npu._record_transfer(size, to_device=True)
        elif direction == xclBOSyncDirection.XCL_BO_SYNC_BO_FROM_DEVICE:
            self.host[window] = self.device_copy[window]
            if self.stale is not None:
                start, end = self.stale
                if offset <= start < offset + size:
                    start = offset + size
                if offset < end <= offset + size:
                    end = offset
                self.stale = (start, end) if start < end else None
            self._npu._record_transfer(size, to_device=False)
        else:
            raise RuntimeError(f"bo.sync: direction {direction!r} is not supported on the NPU")

    def device_view(self, dtype: np.dtype) -> np.ndarray:
        """The device copy as ``dtype`` (what a kernel reads and writes)."""
        usable = self.device_copy.size - self.device_copy.size % np.dtype(dtype).itemsize
        return self.device_copy[:usable].view(dtype)


def _spec_of(image: xclbin):
    """The kernel spec a simulated xclbin was generated from."""
    from xdna_ep.kernels.attention.spec import AttentionSpec
    from xdna_ep.kernels.matmul.spec import MatmulSpec
    from xdna_ep.kernels.softmax.spec import SoftmaxSpec

    kind, params = image.manifest["kind"], image.manifest["params"]
    if kind == "matmul":
        return MatmulSpec(k=params["k"], profile=params["profile"])
    if kind == "attention":
        return AttentionSpec(head_dim=params["head_dim"], precision=params["precision"], profile=params["profile"])
    if kind == "softmax":
        return SoftmaxSpec(cols=params["cols"], profile=params["profile"])
    raise RuntimeError(f"xclbin {image.path.name}: unknown design kind {kind!r}")


def _dtype(name: str) -> np.dtype:
    return np.dtype(np.uint16) if name == "bf16" else np.dtype(np.float32)


def _describe(spec, shape: tuple[int, ...]):
    """The dataflow description of the design at the launch's instruction-stream ``shape``."""
    from xdna_ep.kernels.designs import describe

    return describe(spec, spec.design_shape(shape))


def _execute(spec, flow, buffers: dict[str, bo]) -> dict[str, np.ndarray]:
    """Run the design's dataflow on the device copies (``ep/design_sim.py``); returns the outputs."""
    from xdna_ep.ep import design_sim

    host = {}
    for arg in flow.args:
        view = buffers[arg.name].device_view(_dtype(arg.dtype))
        host[arg.name] = view[: arg.elements]
    return design_sim.run(flow, host, lambda flow, streams: _tile_model(spec).run_cores(flow, streams, spec))


def _tile_model(spec):
    """The per-tile model module of ``spec``'s kernel (``kernels/<kind>/tile.py``)."""
    if spec.kind == "matmul":
        from xdna_ep.kernels.matmul import tile
    elif spec.kind == "attention":
        from xdna_ep.kernels.attention import tile
    else:
        from xdna_ep.kernels.softmax import tile
    return tile


def _modelled_time(profile: DeviceProfile, spec, flow, buffers: dict[str, bo]) -> float:
    """Modelled array time of one launch: the one place the simulator times a launch. The timing walk
    over ``flow``, the description the launch executes, with the kernels' cycles per call; a GEMM pays its
    GELU epilogue when the params objects its cores read ask for it, and the dynamic-K design the wait
    for its runtime parameters.
    """
    from xdna_ep.kernels.timing import flow_time

    if spec.kind == "matmul":
        from xdna_ep.kernels.matmul import cycles
        from xdna_ep.kernels.matmul.design import read_params
        from xdna_ep.kernels.matmul.spec import ACTIVATIONS

        _, k, n = flow.shape
        words = read_params(buffers["b"].device_view(np.uint16), k, n, spec)
        gelu = bool(np.any(words[:, 0] == ACTIVATIONS["gelu"]))
        seconds = flow_time(flow, cycles.call_cycles(profile, spec, gelu=gelu), profile).seconds
        return seconds + (profile.runtime_parameters_s if spec.dynamic_k else 0.0)
    if spec.kind == "attention":
        from xdna_ep.kernels.attention import cycles

        calls = cycles.call_cycles(profile, spec, cost_model.ATTENTION_Q_ROWS_PER_CORE, cost_model.ATTENTION_KV_TILE)
        return flow_time(flow, calls, profile).seconds
    from xdna_ep.kernels.softmax import cycles

    return flow_time(flow, cycles.call_cycles(spec), profile).seconds


def _zero_outputs(spec, buffers: dict[str, bo]) -> None:
    """What a timed-out job leaves in its outputs: zeros on the device (synced back, they read as 0.0)."""
    for arg in spec.args:
        if arg.direction != "in":
            buffer = buffers[arg.name]
            buffer.device_copy[:] = 0
            buffer.host[:] = _POISON
            buffer.written_by_kernel = True
            buffer.stale = (0, buffer.device_copy.size)


class run:  # noqa: N801 - pyxrt's spelling
    """One execution of a kernel. Created by ``kernel(...)`` (started at once) or ``run(kernel)``."""

    def __init__(self, krnl: kernel | None = None) -> None:
        self._kernel = krnl
        self._args: dict[int, object] = {}
        self._state = ert_cmd_state.ERT_CMD_STATE_NEW

    def set_arg(self, index: int, value) -> None:
        self._args[int(index)] = value

    def start(self) -> None:
        if self._kernel is None:
            raise RuntimeError("run.start: this run has no kernel")
        count = max(self._args) + 1 if self._args else 0
        missing = [i for i in range(count) if i not in self._args]
        if missing:
            raise RuntimeError(f"run.start: arguments {missing} were never set")
        self._state = self._kernel._launch([self._args[i] for i in range(count)])

    def wait(self, timeout_ms: int | None = None) -> ert_cmd_state:
        return self._state

    def state(self) -> ert_cmd_state:
        return self._state


class runlist:  # noqa: N801 - pyxrt's spelling
    def __init__(self, ctx: hw_context | None = None) -> None:
        self._context = ctx
        self._runs: list[run] = []
        self._state = ert_cmd_state.ERT_CMD_STATE_NEW

    def add(self, r: run) -> None:
        if self._context is not None and r._kernel is not None and r._kernel.context is not self._context:
            raise RuntimeError("runlist.add: the run's kernel belongs to another hardware context")
        self._runs.append(r)

    def execute(self) -> None:
        self._state = ert_cmd_state.ERT_CMD_STATE_COMPLETED
        npu = self._runs[0]._kernel.context._npu if self._runs and self._runs[0]._kernel is not None else _NPU
        npu.in_runlist = True  # a batched run costs runlist_launch_factor of a launch (whisper-xdna)
        try:
            for r in self._runs:
                r.start()
                if r.state() != ert_cmd_state.ERT_CMD_STATE_COMPLETED:
                    self._state = r.state()
                    break
        finally:
            npu.in_runlist = False

    def wait(self, timeout: int | None = None) -> ert_cmd_state | None:
        if self._state != ert_cmd_state.ERT_CMD_STATE_COMPLETED:
            raise RuntimeError(f"runlist: a run ended in {self._state.name}")
        return None if timeout is None else self._state


class kernel:  # noqa: N801 - pyxrt's spelling
    def __init__(self, ctx: hw_context, name: str) -> None:
        declared = {k["name"]: k for k in ctx.xclbin.manifest["kernels"]}
        if name not in declared:
            raise RuntimeError(
                f"kernel: no kernel named {name!r} in xclbin {ctx.xclbin.path.name} (it has: {', '.join(declared)})"
            )
        self.context = ctx
        self.name = name
        self._args = declared[name]["args"]
        self._spec = _spec_of(ctx.xclbin)

    def group_id(self, index: int) -> int:
        for arg in self._args:
            if arg["index"] == index:
                if arg["kind"] != "buffer":
                    raise RuntimeError(f"kernel {self.name}: argument {index} ({arg['name']}) is not a buffer")
                return int(arg["group_id"])
        raise RuntimeError(f"kernel {self.name}: no argument {index} (it has {len(self._args)})")

    def __call__(self, *args) -> run:
        r = run(self)
        for i, value in enumerate(args):
            r.set_arg(i, value)
        r.start()
        return r

    def _check_buffer(self, index: int, value, expected_group: int, what: str) -> bo:
        if not isinstance(value, bo):
            raise RuntimeError(f"kernel {self.name}: argument {index} ({what}) must be a bo, got {type(value).__name__}")
        if value._npu is not self.context._npu:
            raise RuntimeError(f"kernel {self.name}: argument {index} ({what}) belongs to another device")
        if value.group != expected_group:
            raise RuntimeError(
                f"kernel {self.name}: argument {index} ({what}) is a bo on group id {value.group}, the kernel "
                f"declares group id {expected_group} (allocate it with kernel.group_id({index}))"
            )
        return value

    def _launch(self, args: list) -> ert_cmd_state:
        """Check a launch like XRT and the firmware would, then run the design on the device copies."""
        spec = self._spec
        n_data = len(spec.args)
        expected = 3 + n_data
        if len(args) > expected:
            raise RuntimeError(
                f"kernel {self.name}: {len(args)} arguments for {expected} declared (opcode, instr, ninstr, "
                f"{n_data} buffers): passing more buffers than the kernel declares crashes XRT"
            )
        if len(args) < expected:
            raise RuntimeError(f"kernel {self.name}: {len(args)} arguments for {expected} declared")
        opcode, insts, n_insts, *data = args
        if opcode != artifacts.NPU_LAUNCH_OPCODE:
            raise RuntimeError(f"kernel {self.name}: opcode {opcode}, an NPU launch uses {artifacts.NPU_LAUNCH_OPCODE}")
        insts = self._check_buffer(1, insts, self.group_id(1), "instruction stream")
        if not insts.flags_value & int(bo.flags.cacheable):
            raise RuntimeError(f"kernel {self.name}: the instruction buffer must be allocated with bo.cacheable")
        if not isinstance(n_insts, (int, np.integer)) or not 0 < int(n_insts) <= insts.size() // 4:
            raise RuntimeError(
                f"kernel {self.name}: instruction count {n_insts!r} is not between 1 and the "
                f"{insts.size() // 4} words of the instruction buffer"
            )
        if insts.written_by_kernel or not np.array_equal(insts.host, insts.device_copy):
            raise RuntimeError(
                f"kernel {self.name}: the instruction buffer was written on the host but not synced to the device"
            )
        try:
            kind, shape = artifacts.parse_sim_instruction_words(insts.device_view(np.uint32)[: int(n_insts)])
        except ValueError as error:
            raise RuntimeError(f"kernel {self.name}: missing or invalid instruction stream: {error}") from None
        design_kind = self.context.xclbin.manifest["kind"]
        if kind != design_kind:
            raise RuntimeError(f"kernel {self.name}: a {kind} instruction stream launched on a {design_kind} design")
        try:
            design_shape = spec.design_shape(shape)
            spec.check_shape(*design_shape)
        except ValueError as error:
            raise RuntimeError(f"kernel {self.name}: instruction stream shape {shape}: {error}") from None
        required = spec.arg_bytes(*design_shape)
        buffers: dict[str, bo] = {}
        for i, (arg, value) in enumerate(zip(spec.args, data)):
            index = artifacts.FIRST_DATA_GROUP_ID + i
            buffer = self._check_buffer(index, value, self.group_id(index), arg.name)
            if buffer.size() < required[arg.name]:
                raise RuntimeError(
                    f"kernel {self.name}: buffer '{arg.name}' (argument {index}) has {buffer.size()} bytes, the "
                    f"shape {shape} needs {required[arg.name]}"
                )
            if arg.direction == "in" and not buffer.written_by_kernel:
                used = slice(0, required[arg.name])
                if not np.array_equal(buffer.host[used], buffer.device_copy[used]):
                    raise RuntimeError(
                        f"kernel {self.name}: input '{arg.name}' (argument {index}) was changed on the host after "
                        f"its last sync to the device (missing bo.sync(XCL_BO_SYNC_BO_TO_DEVICE)): the kernel "
                        f"would read stale data"
                    )
            buffers[arg.name] = buffer
        return self._run(spec, shape, buffers)

    def _run(self, spec, shape: tuple[int, ...], buffers: dict[str, bo]) -> ert_cmd_state:
        npu = self.context._npu
        profile = npu.profile
        design = self.context.xclbin.manifest["name"]
        fault = _check_device(f"kernel {self.name}", point="launch")
        with npu.lock:
            switched = npu.loaded_design != design
            flow = _describe(spec, shape)
            compute = _modelled_time(profile, spec, flow, buffers)
            launch = profile.launch_s * (profile.runlist_launch_factor if npu.in_runlist else 1.0)
            modelled = launch + compute + (profile.design_switch_s if switched else 0.0)
            npu.loaded_design = design
            npu.ledger.launches += 1
            npu.ledger.design_switches += int(switched)
            npu.ledger.modelled_s += modelled
            if fault == "launch_error":
                npu.ledger.records.append(LaunchRecord(design, spec.kind, shape, modelled, switched, "ERROR"))
                return ert_cmd_state.ERT_CMD_STATE_ERROR
            if compute > profile.driver_timeout_s or fault == "timeout":
                npu.ledger.records.append(
                    LaunchRecord(design, spec.kind, shape, modelled, switched, "TIMEOUT")
                )
                _zero_outputs(spec, buffers)
                npu.loaded_design = None  # the driver restarted every context: the array is configured again
                return ert_cmd_state.ERT_CMD_STATE_TIMEOUT
            try:
                outputs = _execute(spec, flow, buffers)
            except ValueError as error:  # the kernel's params contradict the launch: a hang or garbage on the device
                raise RuntimeError(f"kernel {self.name}: {error}") from None
            for name, values in outputs.items():
                if fault == "corrupt_result":  # completes, but with wrong numbers
                    values = np.asarray(values) + np.float32(1.0)
                buffer = buffers[name]
                raw = np.ascontiguousarray(values).reshape(-1).view(np.uint8)
                buffer.device_copy[: raw.size] = raw
                buffer.host[: raw.size] = _POISON
                buffer.written_by_kernel = True
                buffer.stale = (0, raw.size)
            npu.ledger.records.append(LaunchRecord(design, spec.kind, shape, modelled, switched, "COMPLETED"))
        return ert_cmd_state.ERT_CMD_STATE_COMPLETED
