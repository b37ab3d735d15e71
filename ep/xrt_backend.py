"""The XRT backend: designs, buffers and launches on an AMD XDNA NPU, written against pyxrt's API.

The binding is chosen in one place, ``load_binding``: XRT's ``pyxrt`` for ``device="npu"`` (an error
naming the cause when it or the NPU is missing), ``ep/simulated_pyxrt.py`` for ``device="sim"``.
Everything else in this file is the same for both, so CI exercises the code that drives the NPU.

The call sequence is mlir-aie's ``python/utils/xrt.py`` (npu.md): ``device(0)``; ``xclbin(path)``;
``register_xclbin``; ``hw_context(device, uuid)``; ``kernel(context, "MLIR_AIE")``; the instruction
stream in a ``cacheable`` buffer on ``kernel.group_id(1)``, data in ``host_only`` buffers on group ids
3, 4, ...; write through ``bo.map()``, ``sync`` to the device; ``kernel(3, insts, n_words, *buffers)``;
``run.wait()`` -> ``ert_cmd_state`` (``check`` raises on anything but COMPLETED); ``sync`` back.

Hardware contexts are a system-wide resource (6 on npu1): the device object is shared by every
executor of the process (``get_device``), opens one context per design on first use, and when the
budget is exhausted drains all contexts before opening the new one (evicting a single context can
break the next submit on Phoenix firmware, npu.md), counting each eviction.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xdna_ep.ep import cost_model
from xdna_ep.ep.device import DeviceProfile, get_profile, hw_context_share, profile_for_device_name
from xdna_ep.errors import DeviceError
from xdna_ep.kernels import artifacts

BACKENDS = ("sim", "npu")
NPU_DEVICE_NODE = Path("/dev/accel/accel0")

# What each non-completed command state means on the XDNA driver (xdna-driver aie2 sources, npu.md).
STATE_MEANINGS = {
    "ERT_CMD_STATE_TIMEOUT": "the driver killed the job after 2 s without progress; all hardware contexts restart",
    "ERT_CMD_STATE_ERROR": "the firmware rejected or failed the command (bad instruction stream or arguments)",
    "ERT_CMD_STATE_ABORT": "the command was aborted (context torn down or device reset)",
    "ERT_CMD_STATE_NORESPONSE": "the device stopped responding",
    "ERT_CMD_STATE_SKERROR": "the soft kernel reported an error",
    "ERT_CMD_STATE_SKCRASHED": "the soft kernel crashed",
    "ERT_CMD_STATE_NEW": "the command was never submitted",
    "ERT_CMD_STATE_QUEUED": "the command is still queued",
    "ERT_CMD_STATE_RUNNING": "the command is still running",
    "ERT_CMD_STATE_SUBMITTED": "the command is still submitted",
}


# What pyxrt raises: XRT throws C++ exceptions (xrt_core::system_error, std::runtime_error, ...) and
# pybind11 translates them (pybind11 docs, "Built-in C++ to Python exception translation"):
# std::exception and system errors -> RuntimeError, std::bad_alloc -> MemoryError, invalid_argument /
# domain_error / length_error -> ValueError, out_of_range -> IndexError, overflow_error -> OverflowError,
# a wrong argument type -> TypeError; OSError and KeyError for the file and map lookups of the bindings.
PYXRT_ERRORS = (RuntimeError, MemoryError, ValueError, IndexError, OverflowError, TypeError, OSError, KeyError)


def npu_status() -> tuple[bool, str]:
    """(usable, reason): whether a real XDNA NPU can be driven from this process, and why (not)."""
    try:
        pyxrt = importlib.import_module("pyxrt")
    except ImportError as error:
        return False, f"pyxrt is not importable ({error}); it ships with XRT (Debian: python3-xrt)"
    if not NPU_DEVICE_NODE.exists():
        return False, f"{NPU_DEVICE_NODE} does not exist (amdxdna driver not loaded, or no NPU)"
    try:
        count = pyxrt.enumerate_devices()
    except RuntimeError as error:
        return False, f"XRT cannot enumerate devices: {error}"
    if count < 1:
        return False, "XRT sees no device"
    return True, f"{count} XRT device(s), {NPU_DEVICE_NODE} present"


def load_binding(backend: str):
    """The pyxrt module for ``backend``: the real ``pyxrt`` for "npu", the simulated one for "sim"."""
    if backend == "sim":
        from xdna_ep.ep import simulated_pyxrt

        return simulated_pyxrt
    if backend == "npu":
        usable, reason = npu_status()
        if not usable:
            raise DeviceError(f"device npu: no usable NPU: {reason}")
        return importlib.import_module("pyxrt")
    raise ValueError(f"unknown NPU backend {backend!r}: valid backends are {', '.join(BACKENDS)}")


def check(binding, state, what: str) -> None:
    """Raise DeviceError unless ``state`` is ERT_CMD_STATE_COMPLETED; the message decodes the state."""
    if state == binding.ert_cmd_state.ERT_CMD_STATE_COMPLETED:
        return
    name = getattr(state, "name", str(state))
    raise DeviceError(f"{what}: {name}: {STATE_MEANINGS.get(name, 'unknown command state')}", cause=name)


def check_generation(device_name: str, profile: DeviceProfile) -> None:
    """DeviceError unless XRT's name of the device is an NPU of ``profile``'s generation."""
    try:
        generation = profile_for_device_name(device_name)
    except ValueError as error:
        raise DeviceError(f"device {device_name!r}: {error}", cause="generation") from None
    if generation != profile.name:
        raise DeviceError(
            f"profile {profile.name} does not match the device: XRT names it {device_name!r}, an {generation} "
            f"(use profile={generation!r}, or leave the profile unset to read it from the device)",
            cause="generation",
        )


def detect_profile(backend: str = "npu") -> str:
    """The profile of the NPU ``backend`` drives, from XRT's device name query."""
    binding = load_binding(backend)
    try:
        name = binding.device(0).get_info(binding.xrt_info_device.name)
    except PYXRT_ERRORS as error:
        raise DeviceError(f"{backend} device name query: {type(error).__name__}: {error}", cause="get_info") from error
    try:
        return profile_for_device_name(name)
    except ValueError as error:
        raise DeviceError(f"device {name!r}: {error}", cause="generation") from None


class Buffer:
    """A buffer object with a NumPy view of its mapped host memory."""

    def __init__(self, device: XrtDevice, group_id: int, nbytes: int, flags) -> None:
        self.device = device
        self.nbytes = int(nbytes)
        self.bo = device.call("bo", lambda: device.binding.bo(device.handle, self.nbytes, flags, group_id))
        self.host = np.frombuffer(self.bo.map(), dtype=np.uint8)

    def view(self, dtype, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """The mapped host memory as ``dtype`` (optionally reshaped: the leading bytes)."""
        flat = self.host[: self.nbytes - self.nbytes % np.dtype(dtype).itemsize].view(dtype)
        return flat if shape is None else flat[: int(np.prod(shape))].reshape(shape)

    def to_device(self, nbytes: int | None = None, offset: int = 0) -> int:
        """Sync ``nbytes`` (default all) at ``offset`` host -> device; returns the bytes synced."""
        nbytes = self.nbytes - offset if nbytes is None else int(nbytes)
        direction = self.device.binding.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE
        self.device.call("bo.sync", lambda: self.bo.sync(direction, nbytes, offset))
        return nbytes

    def from_device(self, nbytes: int | None = None, offset: int = 0) -> int:
        """Sync ``nbytes`` (default all) at ``offset`` device -> host; returns the bytes synced."""
        nbytes = self.nbytes - offset if nbytes is None else int(nbytes)
        direction = self.device.binding.xclBOSyncDirection.XCL_BO_SYNC_BO_FROM_DEVICE
        self.device.call("bo.sync", lambda: self.bo.sync(direction, nbytes, offset))
        return nbytes


@dataclass
class LaunchResult:
    """What one launch cost: the modelled device time and the wall time of kernel() + wait()."""

    modelled_s: float  # launch + compute (+ design switch) from the cost model
    wall_s: float
    switched_design: bool


class Design:
    """One compiled design on the device: its xclbin, hardware context, kernel and instruction streams."""

    def __init__(self, device: XrtDevice, spec) -> None:
        self.device = device
        self.spec = spec
        binding = device.binding
        self.xclbin_path = device.xclbin_path(spec)
        self.xclbin = device.call(f"xclbin {self.xclbin_path}", lambda: binding.xclbin(str(self.xclbin_path)))
        names = [k.get_name() for k in self.xclbin.get_kernels()]
        if artifacts.MLIR_AIE_KERNEL not in names:
            raise DeviceError(f"{self.xclbin_path.name} has no kernel {artifacts.MLIR_AIE_KERNEL!r} (it has {names})")
        uuid = device.call("register_xclbin", lambda: device.handle.register_xclbin(self.xclbin))
        self.context = device.call(f"hw_context for {spec.name}", lambda: binding.hw_context(device.handle, uuid))
        self.kernel = device.call("kernel", lambda: binding.kernel(self.context, artifacts.MLIR_AIE_KERNEL))
        self._insts: dict[tuple[int, ...], tuple[object, int]] = {}

    def group_id(self, arg_name: str) -> int:
        for i, arg in enumerate(self.spec.args):
            if arg.name == arg_name:
                return self.device.call("group_id", lambda: self.kernel.group_id(artifacts.FIRST_DATA_GROUP_ID + i))
        raise KeyError(f"{self.spec.name} has no argument {arg_name!r}")

    def buffer(self, arg_name: str, nbytes: int) -> Buffer:
        """A new host_only buffer for argument ``arg_name``."""
        return Buffer(self.device, self.group_id(arg_name), nbytes, self.device.binding.bo.host_only)

    def instructions(self, shape: tuple[int, ...]) -> tuple[object, int]:
        """(instruction bo, number of uint32 words) for the design's runtime shape, loaded once."""
        cached = self._insts.get(shape)
        if cached is None:
            words = artifacts.read_insts(self.device.insts_path(self.spec, shape))
            group = self.device.call("group_id", lambda: self.kernel.group_id(artifacts.INSTRUCTION_GROUP_ID))
            insts = Buffer(self.device, group, words.nbytes, self.device.binding.bo.cacheable)
            insts.view(np.uint32)[: words.size] = words
            self.device.stats.bytes_to_device += insts.to_device()
            cached = (insts, int(words.size))
            self._insts[shape] = cached
        return cached

    def launch(self, shape: tuple[int, ...], buffers: list[Buffer], compute_s: float) -> LaunchResult:
        """Run the design once on ``buffers`` (runtime-sequence order) for the instruction stream of ``shape``."""
        insts, n_words = self.instructions(shape)
        device = self.device
        switched = device.loaded_design != self.spec.name
        start = time.perf_counter()
        run = device.call(
            f"launch {self.spec.name}",
            lambda: self.kernel(artifacts.NPU_LAUNCH_OPCODE, insts.bo, n_words, *[b.bo for b in buffers]),
        )
        state = device.call(f"wait {self.spec.name}", run.wait)
        wall = time.perf_counter() - start
        device.loaded_design = self.spec.name
        check(device.binding, state, f"{self.spec.name} {shape}")
        profile = device.profile
        modelled = profile.launch_s + compute_s + (profile.design_switch_s if switched else 0.0)
        stats = device.stats
        stats.launches += 1
        stats.design_switches += int(switched)
        stats.modelled_s += modelled
        return LaunchResult(modelled_s=modelled, wall_s=wall, switched_design=switched)


    def launch_batch(self, launches: list[tuple[tuple[int, ...], list[Buffer], float]]) -> list[LaunchResult]:
        """Several launches of this design, each ``(shape, buffers, compute_s)`` on buffers of its own, as
        one ``runlist``: whisper-xdna measured about 24 % less per run on npu1
        (``DeviceProfile.runlist_launch_factor``), so the runlist models cheaper whenever there are two
        or more; a single launch goes through ``launch``."""
        if len(launches) == 1:
            return [self.launch(*launches[0])]
        device = self.device
        binding = device.binding
        runlist = device.call(f"runlist {self.spec.name}", lambda: binding.runlist(self.context))
        runs = []
        for shape, buffers, _ in launches:
            insts, n_words = self.instructions(shape)
            run = device.call("run", lambda: binding.run(self.kernel))
            for index, value in enumerate([artifacts.NPU_LAUNCH_OPCODE, insts.bo, n_words, *[b.bo for b in buffers]]):
                device.call("run.set_arg", lambda index=index, value=value: run.set_arg(index, value))
            device.call("runlist.add", lambda run=run: runlist.add(run))
            runs.append(run)
        switched = device.loaded_design != self.spec.name
        start = time.perf_counter()
        device.call(f"runlist.execute {self.spec.name}", runlist.execute)
        device.call(f"runlist.wait {self.spec.name}", runlist.wait)
        wall = (time.perf_counter() - start) / len(launches)
        device.loaded_design = self.spec.name
        profile = device.profile
        results = []
        for index, (run, (shape, _, compute_s)) in enumerate(zip(runs, launches)):
            check(binding, device.call("run.state", run.state), f"{self.spec.name} {shape} (runlist)")
            first_switch = switched and index == 0
            modelled = (
                profile.launch_s * profile.runlist_launch_factor + compute_s
                + (profile.design_switch_s if first_switch else 0.0)
            )  # fmt: skip
            device.stats.launches += 1
            device.stats.design_switches += int(first_switch)
            device.stats.modelled_s += modelled
            results.append(LaunchResult(modelled_s=modelled, wall_s=wall, switched_design=first_switch))
        return results


@dataclass
class DeviceStats:
    """Counters of the shared device (all executors of the process)."""

    launches: int = 0
    design_switches: int = 0
    contexts_created: int = 0
    context_evictions: int = 0
    bytes_to_device: int = 0
    bytes_from_device: int = 0
    modelled_s: float = 0.0
    designs: list[str] = field(default_factory=list)  # designs opened, in order

    def as_dict(self) -> dict:
        return {
            "launches": self.launches,
            "design_switches": self.design_switches,
            "contexts_created": self.contexts_created,
            "context_evictions": self.context_evictions,
            "bytes_to_device": self.bytes_to_device,
            "bytes_from_device": self.bytes_from_device,
            "modelled_s": self.modelled_s,
            "designs": list(self.designs),
        }


class XrtDevice:
    """The NPU as this process sees it: binding, device handle, open designs, shared counters.

    Every call into the binding goes through ``call`` (under one lock: the device is used by one
    thread at a time), which turns every exception type pyxrt raises (``PYXRT_ERRORS``) into a
    DeviceError naming the step. On opening, the device's name (XRT's device name query) must be an
    NPU of ``profile``'s generation; the process takes ``hw_context_share`` of its hardware contexts.
    """

    def __init__(self, backend: str, profile: str | DeviceProfile, context_budget: int | None = None) -> None:
        self.backend = backend
        self.profile = get_profile(profile)
        self.binding = load_binding(backend)
        self.simulated = bool(getattr(self.binding, "SIMULATED", False))
        if self.simulated:
            self.binding.simulated_npu().configure(self.profile.name)
        self.context_budget = context_budget or hw_context_share(self.profile)
        self.lock = threading.RLock()
        self.stats = DeviceStats()
        self.self_checks: dict[str, str] = {}  # design name -> "" (passed) or why its start-up check failed
        self.handle = self.call("device(0)", lambda: self.binding.device(0))
        self.device_name = self.call("get_info", lambda: self.handle.get_info(self.binding.xrt_info_device.name))
        check_generation(self.device_name, self.profile)
        self.designs: OrderedDict[str, Design] = OrderedDict()  # least recently used first
        self.loaded_design: str | None = None

    def call(self, what: str, function):
        """``function()`` under the device lock; the binding's RuntimeError becomes a DeviceError."""
        with self.lock:
            try:
                return function()
            except DeviceError:
                raise
            except PYXRT_ERRORS as error:
                raise DeviceError(
                    f"{self.backend} {what}: {type(error).__name__}: {error}", cause=what.split()[0]
                ) from error

    def xclbin_path(self, spec) -> Path:
        """The xclbin file of ``spec``: built by CMake (npu), generated from the spec (sim)."""
        if self.simulated:
            return artifacts.write_sim_artifacts(artifacts.sim_kernel_dir(), spec.xclbin_name, spec.sim_manifest())
        path = artifacts.kernel_dir() / spec.xclbin_name
        if not path.is_file():
            raise DeviceError(
                f"{path} does not exist: build the NPU kernels with `cmake -S . -B build && cmake --build build` "
                f"(needs the MLIR-AIE toolchain) or set ${artifacts.KERNEL_DIR_ENV}"
            )
        return path

    def insts_path(self, spec, shape: tuple[int, ...]) -> Path:
        """The instruction stream of ``spec`` for the runtime ``shape`` (as its instruction words encode it)."""
        design_shape = spec.design_shape(shape)
        name = spec.insts_name(*design_shape)
        if self.simulated:
            words = spec.instruction_words(*design_shape)
            return artifacts.write_sim_insts(artifacts.sim_kernel_dir(), name, words)
        path = artifacts.kernel_dir() / name
        if not path.is_file():
            raise DeviceError(
                f"{path} does not exist: the instruction stream of {spec.name} for shape {shape} was not built "
                f"(add the shape to the design list of CMakeLists.txt)"
            )
        return path

    def design(self, spec) -> Design:
        """The open design of ``spec`` (opened on first use; LRU under the hardware-context budget)."""
        with self.lock:
            design = self.designs.get(spec.name)
            if design is not None:
                self.designs.move_to_end(spec.name)
                return design
            if len(self.designs) >= self.context_budget:
                # drain every context, not just one: evicting a single context can break the next submit
                self.stats.context_evictions += len(self.designs)
                self.designs.clear()
                self.loaded_design = None
            design = Design(self, spec)
            self.designs[spec.name] = design
            self.stats.contexts_created += 1
            self.stats.modelled_s += self.profile.xclbin_load_s + self.profile.context_create_s
            self.stats.designs.append(spec.name)
            return design

    def record_transfer(self, nbytes: int, to_device: bool) -> float:
        """Count a sync and return its modelled time."""
        if to_device:
            self.stats.bytes_to_device += nbytes
        else:
            self.stats.bytes_from_device += nbytes
        seconds = cost_model.transfer_s(self.profile, nbytes)
        self.stats.modelled_s += seconds
        return seconds

    def describe(self) -> str:
        kind = "simulated " if self.simulated else ""
        return f"{kind}{self.profile.name} ({self.profile.description})"


_devices: dict[tuple[str, str], XrtDevice] = {}
_devices_lock = threading.Lock()


def get_device(backend: str, profile: str | DeviceProfile) -> XrtDevice:
    """The process-wide XrtDevice of ``backend`` ("sim" or "npu") and ``profile``."""
    profile = get_profile(profile)
    key = (backend, profile.name)
    with _devices_lock:
        device = _devices.get(key)
        if device is None:
            device = XrtDevice(backend, profile)
            _devices[key] = device
        return device


def close_devices() -> None:
    """Forget every open device (their contexts close when the last reference goes)."""
    with _devices_lock:
        _devices.clear()
