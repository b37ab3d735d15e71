"""The session factory: compile a Whisper ONNX model for the NPU and open ONNX Runtime sessions on it.

    model = xdna_ep.compile("encoder_model.onnx", device="sim", profile="npu1")
    session = onnxruntime.InferenceSession(model.SerializeToString(), xdna_ep.session_options())

or in one call ``xdna_ep.InferenceSession("encoder_model.onnx", device="sim")``.

``device`` says where the xdna ops run: ``npu`` (the real NPU; an error if there is none), ``sim`` (the
simulated NPU), ``cpu`` (no offload: the stock graph on ONNX Runtime's CPU EP), ``auto`` (``npu``
when present, else ``cpu``, and it says which). ``profile`` says which NPU the cost model plans for
(``npu1`` by default). ``make_executor`` is the one place that maps a device to an executor.

The device is a property of the compiled model, fixed by ``compile``: nothing process-wide decides
where an op runs, so two sessions on different devices in one process each run where they were told.
Sessions of the same device, profile and precision share one executor (the device is opened once).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import ModelProto, numpy_helper

from xdna_ep.ep import registry
from xdna_ep.ep.executor import Executor, ReferenceExecutor
from xdna_ep.errors import ComputeError, DeviceError, FallbackError, ModelError

logger = logging.getLogger(__name__)

DEVICES = ("cpu", "sim", "npu", "auto")
DEFAULT_DEVICE = "auto"
DEFAULT_PRECISION = "bf16"
PLACEMENT_ENV = "XDNA_EP_PLACEMENT"  # placement of InferenceSession when none is given ("auto" if unset)
NPU_DEVICE_NODE = Path("/dev/accel/accel0")
MODEL_KEY_METADATA = "xdna.model_key"  # metadata_props entry naming a compiled model's registry key
SAVED_METADATA = {"compiled": "xdna.compiled", "profile": "xdna.profile", "precision": "xdna.precision"}

# one executor per (device, profile, precision), alive while a compiled model uses it
_executors: weakref.WeakValueDictionary[tuple[str, str, str], Executor] = weakref.WeakValueDictionary()
_executors_lock = threading.Lock()
_warned_reference = False
_auto_announced: set[str] = set()


def check_device(device: str) -> str:
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}: valid devices are {', '.join(DEVICES)}")
    return device


def npu_present() -> bool:
    """True when an XDNA NPU is usable here: the accel device node exists and pyxrt imports."""
    import importlib.util

    return NPU_DEVICE_NODE.exists() and importlib.util.find_spec("pyxrt") is not None


def resolve_device(device: str) -> str:
    """``auto`` -> ``npu`` or ``cpu`` (logged with the reason); other devices are checked and returned."""
    check_device(device)
    if device != "auto":
        return device
    resolved = "npu" if npu_present() else "cpu"
    if resolved not in _auto_announced:  # said once per process, not once per session
        _auto_announced.add(resolved)
        if resolved == "npu":
            logger.warning("device auto: using the NPU (%s and pyxrt found)", NPU_DEVICE_NODE)
        else:
            logger.warning("device auto: no NPU here (%s or pyxrt missing), running on the cpu", NPU_DEVICE_NODE)
    return resolved


def resolve_profile(profile: str | None, device: str | None = None) -> str:
    """The NPU profile to plan for: the given one (checked; the device refuses a mismatch when it opens),
    else read from the NPU for device "npu" (XRT's device name query), else npu1."""
    from xdna_ep.ep.device import DEFAULT_PROFILE, get_profile

    if profile is None and device == "npu":
        from xdna_ep.ep.xrt_backend import detect_profile

        return detect_profile("npu")
    return get_profile(profile or DEFAULT_PROFILE).name


def make_executor(device: str, profile: str, precision: str) -> Executor:
    """The executor the xdna ops of ``device`` compute with (one per device, profile and precision).

    ``cpu``: the fp32 NumPy reference. ``sim`` / ``npu``: ``ep/npu_executor.py``'s NpuExecutor against
    the simulated or the real NPU; while that device layer is not installed, ``sim`` computes with the
    reference (warned once) and ``npu`` is an error.
    """
    global _warned_reference
    device = resolve_device(device)
    key = (device, profile, precision)
    with _executors_lock:
        executor = _executors.get(key)
        if executor is not None:
            return executor
        if device == "cpu":
            executor = ReferenceExecutor()
        else:
            try:
                from xdna_ep.ep.npu_executor import NpuExecutor
            except ImportError as error:
                if device == "npu":
                    raise DeviceError(f"device npu needs the NPU device layer, which is not available: {error}") from error
                if not _warned_reference:
                    logger.warning("device sim: the NPU device layer is not available (%s); xdna ops compute with the NumPy reference", error)
                    _warned_reference = True
                executor = ReferenceExecutor()
            else:
                executor = NpuExecutor(device=device, profile=profile, precision=precision)
        _executors[key] = executor
        return executor


REGISTERED_CONFIG_KEY = "xdna.custom_ops_registered"  # set on SessionOptions that carry the xdna ops


def session_options(device: str | None = None, *, base: ort.SessionOptions | None = None) -> ort.SessionOptions:
    """SessionOptions with the xdna custom-op library registered (``base`` is updated when given).

    Registering twice on one SessionOptions is skipped, so options can be reused. The ops run on the
    device their model was compiled for (``compile(device=...)``); ``device``, when given, is only
    checked (``npu`` without an NPU is an error here rather than at the first run).
    """
    from xdna_ep.ep import ops

    if device is not None and resolve_device(device) == "npu" and not npu_present():
        raise DeviceError(f"device npu: no NPU here ({NPU_DEVICE_NODE} or pyxrt missing); use device sim or cpu")
    options = base if base is not None else ort.SessionOptions()
    if not has_xdna_ops(options):
        options.register_custom_ops_library(ops.library_path())
        options.add_session_config_entry(REGISTERED_CONFIG_KEY, "1")
    return options


def has_xdna_ops(options: ort.SessionOptions) -> bool:
    """Whether ``session_options`` registered the xdna ops on ``options`` already."""
    try:
        return options.get_session_config_entry(REGISTERED_CONFIG_KEY) == "1"
    except RuntimeError:  # ONNX Runtime raises for a key that was never set
        return False


def load_model(model: str | os.PathLike | ModelProto) -> ModelProto:
    """A ModelProto from a path (loaded) or a ModelProto (copied: compile rewrites in place)."""
    if isinstance(model, ModelProto):
        return ModelProto.FromString(model.SerializeToString())
    path = Path(model)
    if not path.is_file():
        raise ModelError(f"ONNX model not found: {path}")
    try:
        return onnx.load(str(path))
    except Exception as error:  # noqa: BLE001 - protobuf decode errors have no common type
        raise ModelError(f"{path} is not a readable ONNX model: {error}") from error


def compile(
    model: str | os.PathLike | ModelProto,
    *,
    profile: str | None = None,
    placement: str | object = "auto",
    precision: str = DEFAULT_PRECISION,
    device: str | None = None,
    any_model: bool = False,
    dims: dict[str, int] | None = None,
) -> ModelProto:
    """Fuse, partition and bind a Whisper ONNX model; returns the rewritten ModelProto.

    ``any_model=True`` rewrites non-Whisper models too (the ONNX conformance run uses it). ``dims``
    (symbolic dimension name -> size) sets the input sizes placement plans for; by default they are
    found from the graph's structure (``graph_passes/shapes.py``) and the report says which were used.

    The weights of the nodes placed on the NPU leave the graph and are registered in this process
    under a fresh ``model_key`` (the returned model only runs here; ``release`` frees them). ``placement``:
    "auto" (cost model), "npu", "cpu", or per op kind ("npu,softmax=cpu"). ``device`` binds the ops to
    a device for good; None means ``auto`` (the NPU when present, else the NumPy reference on the CPU),
    said in a warning.
    """
    from xdna_ep.ep.cost_model import check_precision
    from xdna_ep.graph_passes.orchestrator import run_passes

    check_precision(precision)
    if device is None:
        device = resolve_device(DEFAULT_DEVICE)
        logger.warning("compile: no device given, the xdna ops of this model run on %s (device auto)", device)
    else:
        device = resolve_device(device)
    profile = resolve_profile(profile, device)
    proto = load_model(model)
    proto, report = run_passes(
        proto, profile=profile, placement=placement, precision=precision, any_model=any_model, dims=dims
    )
    return bind(proto, device=device, profile=profile, precision=precision, report=report)


def bind(
    model: ModelProto,
    *,
    device: str = "cpu",
    profile: str = "npu1",
    precision: str = DEFAULT_PRECISION,
    report: object = None,
) -> ModelProto:
    """Register the weights of the model's xdna nodes under a fresh key and stamp the key on the nodes.

    The weights leave the graph (in place); the model then only runs in this process.
    """
    from xdna_ep.graph_passes import xdna_ops
    from xdna_ep.graph_passes.graph import remove_unused_initializers

    initializers = {init.name: init for init in model.graph.initializer}
    weights: dict[str, np.ndarray] = {}
    xdna_nodes = [node for node in model.graph.node if xdna_ops.is_xdna(node)]
    for node in xdna_nodes:
        if node.op_type == xdna_ops.MATMUL:
            attrs = xdna_ops.attributes(node)
            for name in (attrs["weight_key"], attrs["bias_key"]):
                if name and name not in weights:
                    weights[name] = numpy_helper.to_array(initializers[name]).astype(np.float32, copy=False)
    compiled = registry.register(weights, device=device, profile=profile, precision=precision, report=report)
    for node in xdna_nodes:
        xdna_ops.set_string_attribute(node, "model_key", compiled.key)
    remove_unused_initializers(model)
    entry = model.metadata_props.add()
    entry.key, entry.value = MODEL_KEY_METADATA, compiled.key
    return model


def release(model: ModelProto | str) -> None:
    """Free the weights ``compile`` registered for ``model`` (a compiled ModelProto or its key).

    Its sessions must be gone: an op of a released model can no longer compute and its run raises.
    """
    key = model if isinstance(model, str) else model_key(model)
    if key is not None:
        registry.release(key)


def save(model: ModelProto, path: str | os.PathLike) -> Path:
    """Save a model ``compile`` returned, with its NPU weights, so that another process loads it with
    ``InferenceSession(path, device=...)`` without compiling again (placement kept as decided).

    The weights go to ``<path>.data`` next to it as ONNX external data, so models over 2 GB save too.
    """
    key = model_key(model)
    if key is None:
        raise ModelError("only a model returned by xdna_ep.compile can be saved as a compiled model")
    try:
        compiled = registry.lookup(key)
    except KeyError:
        raise ModelError(f"the compiled model {key} was released or compiled in another process") from None
    path = Path(path)
    copy = ModelProto.FromString(model.SerializeToString())
    existing = {init.name for init in copy.graph.initializer}
    copy.graph.initializer.extend(
        numpy_helper.from_array(array, name) for name, array in compiled.weights.items() if name not in existing
    )
    kept = [(entry.key, entry.value) for entry in copy.metadata_props if entry.key != MODEL_KEY_METADATA]
    kept += [(SAVED_METADATA["compiled"], "1"), (SAVED_METADATA["profile"], compiled.profile), (SAVED_METADATA["precision"], compiled.precision)]
    del copy.metadata_props[:]
    for name, value in kept:
        entry = copy.metadata_props.add()
        entry.key, entry.value = name, value
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()  # onnx appends to an existing external-data file
    onnx.save_model(copy, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name, size_threshold=1024)
    return path


def saved_compiled(path: str | os.PathLike) -> dict[str, str] | None:
    """The metadata of a model ``save`` wrote (compiled, profile, precision), or None for any other file."""
    try:
        header = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not ONNX: load_model reports it with the path
        return None
    entries = {entry.key: entry.value for entry in header.metadata_props}
    if entries.get(SAVED_METADATA["compiled"]) != "1":
        return None
    return {name: entries.get(key, "") for name, key in SAVED_METADATA.items()}


def model_key(model: ModelProto) -> str | None:
    """The registry key ``compile`` stamped on a model, or None."""
    return next((entry.value for entry in model.metadata_props if entry.key == MODEL_KEY_METADATA), None)


class InferenceSession(ort.InferenceSession):
    """An ``onnxruntime.InferenceSession`` whose heavy ops run on ``device`` (see the module docstring).

    ``device="cpu"`` opens the stock graph on the CPU EP, untouched. Otherwise the model is compiled
    (``profile``, ``placement``, ``precision``) and its xdna ops run on the device's executor;
    ``strict=True`` turns any CPU fallback of an NPU-placed op into a FallbackError after the run.
    ``placement`` defaults to ``$XDNA_EP_PLACEMENT``, else "auto"; ``dims`` sets the sizes placement
    plans for (see ``compile``); ``any_model=True`` rewrites graphs that are not Whisper sessions too. A file written by ``save`` is opened as compiled (its placement kept,
    no passes run), with its xdna ops on ``device`` (``cpu``: the fp32 NumPy reference).
    ``report`` holds the pass report (counts, placements, reasons); ``device`` the resolved device.
    """

    def __init__(
        self,
        path_or_model: str | os.PathLike | ModelProto,
        device: str = DEFAULT_DEVICE,
        profile: str | None = None,
        precision: str = DEFAULT_PRECISION,
        strict: bool = False,
        placement: str | object | None = None,
        sess_options: ort.SessionOptions | None = None,
        dims: dict[str, int] | None = None,
        any_model: bool = False,
        **kwargs,
    ):
        self.device = resolve_device(device)
        self.strict = strict
        self.compiled = None
        providers = kwargs.pop("providers", ["CPUExecutionProvider"])
        saved = None if isinstance(path_or_model, ModelProto) else saved_compiled(load_model_path(path_or_model))
        if saved is not None:  # a compiled model from ``save``: bind its weights here, no passes
            model = bind(load_model(path_or_model), device=self.device, profile=saved["profile"], precision=saved["precision"])
            self.compiled = registry.lookup(model_key(model))
            self.compiled.executor()
            super().__init__(model.SerializeToString(), session_options(base=sess_options), providers=providers, **kwargs)
            return
        if self.device == "cpu":
            if isinstance(path_or_model, ModelProto):
                source = path_or_model.SerializeToString()
            else:
                source = str(load_model_path(path_or_model))
            super().__init__(source, sess_options, providers=providers, **kwargs)
            return
        if placement is None:
            placement = os.environ.get(PLACEMENT_ENV) or "auto"
        model = compile(
            path_or_model, profile=profile, placement=placement, precision=precision, device=self.device, dims=dims,
            any_model=any_model,
        )
        self.compiled = registry.lookup(model_key(model))
        self.compiled.executor()  # the device opens and the weights go resident now: errors surface here
        options = session_options(self.device, base=sess_options)
        super().__init__(model.SerializeToString(), options, providers=providers, **kwargs)

    def __del__(self) -> None:
        # the compiled model's weights (and, with the last user, its executor) go with the session
        compiled = getattr(self, "compiled", None)
        if compiled is not None:
            try:
                registry.release(compiled.key)
            except (TypeError, AttributeError):  # interpreter shutdown: module globals already cleared
                pass

    @property
    def report(self):
        return self.compiled.report if self.compiled is not None else None

    def run(self, output_names, input_feed, run_options=None):
        if self.compiled is None:
            return super().run(output_names, input_feed, run_options)
        from xdna_ep.ep.ops import collect_fallbacks, failures, take_interrupt

        take_interrupt()  # forget one that landed in another session's op
        with collect_fallbacks() as fallbacks:  # this run's, not those of other threads' runs
            outputs = super().run(output_names, input_feed, run_options)
        if take_interrupt():
            raise KeyboardInterrupt  # Ctrl-C landed inside an xdna op, which computed on instead of raising
        failed = failures(fallbacks)
        if failed:
            first = failed[0]
            raise ComputeError(
                f"{len(failed)} xdna op call(s) could be computed neither on the {self.device} nor on the CPU, "
                f"first xdna::{first.op_type} node {first.node!r}: {first.message}"
            )
        if self.strict and fallbacks:
            first = fallbacks[0]
            causes = sorted({fallback.cause for fallback in fallbacks})
            raise FallbackError(
                f"strict: {len(fallbacks)} NPU op call(s) were recomputed on the CPU, first xdna::{first.op_type} "
                f"node {first.node!r}: {first.message} (causes: {', '.join(causes)})"
            )
        return outputs


def load_model_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"ONNX model not found: {path}")
    return path


def measure_cpu_passes(folder: str | os.PathLike, repeats: int = 10) -> dict[str, dict[str, float]]:
    """Median run time (ms) of each Whisper session: the stock graph vs the passes with every fused node
    placed on the CPU (written back as its original nodes), both with ONNX Runtime's default options.

    Inputs are random at the representative sizes (encoder 3000 frames, 4 prompt tokens, 1 token after
    224 past). Returns {session: {"stock_ms", "passes_cpu_ms", "ratio"}} from the medians, and the same
    from the fastest runs ("*_min_ms", "min_ratio": the least disturbed by other load).
    """
    import time

    from xdna_ep.graph_passes.shapes import REPRESENTATIVE_DIMS, session_role

    results = {}
    rng = np.random.default_rng(0)
    for name in ("encoder_model", "decoder_model", "decoder_with_past_model"):
        path = Path(folder) / f"{name}.onnx"
        stock = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        rewritten = compile(path, placement="cpu", device="cpu")
        passes = ort.InferenceSession(rewritten.SerializeToString(), providers=["CPUExecutionProvider"])
        dims = REPRESENTATIVE_DIMS[session_role(rewritten)]
        feeds = {}
        for value in stock.get_inputs():
            shape = [d if isinstance(d, int) else dims.get(d, 1) for d in value.shape]
            if value.type == "tensor(int64)":
                feeds[value.name] = rng.integers(0, 1000, size=shape, dtype=np.int64)
            else:
                feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
        timings = {}
        for label, session in (("stock_ms", stock), ("passes_cpu_ms", passes)):
            session.run(None, feeds)
        for _ in range(repeats):  # interleaved, so that load on the machine hits both alike
            for label, session in (("stock_ms", stock), ("passes_cpu_ms", passes)):
                start = time.perf_counter()
                session.run(None, feeds)
                timings.setdefault(label, []).append((time.perf_counter() - start) * 1e3)
        entry = {label: float(np.median(values)) for label, values in timings.items()}
        entry.update({label.replace("_ms", "_min_ms"): float(np.min(values)) for label, values in timings.items()})
        entry["ratio"] = entry["passes_cpu_ms"] / entry["stock_ms"]
        entry["min_ratio"] = entry["passes_cpu_min_ms"] / entry["stock_min_ms"]
        results[name] = entry
    return results
