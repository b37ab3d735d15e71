"""int8 weights for the CPU path: every ONNX graph of an exported model folder, its MatMul weights
quantized to 8 bits by ONNX Runtime, cached in ``<folder>/int8/``.

    <folder>/*.onnx  MatMul(x, W fp32)
      -> <folder>/int8/*.onnx  MatMulNBits(x, W int8 in blocks of 32 along K, one fp32 scale per block)

Weight-only, symmetric, round to nearest (ONNX Runtime's ``MatMulNBitsQuantizer``, ``bits=8``), with
``accuracy_level=4``: the kernel quantizes the activations to int8 per block too and multiplies in
int8, which is what makes it faster than fp32 here (``accuracy_level=0``, fp32 compute over
dequantized weights, measured 4x slower than fp32 on tiny.en). Only MatMuls whose weight is a 2-D
initializer change; embeddings (Gather), convolutions, layer norms and attention scores stay fp32.

Measured against ``quantize_dynamic`` (MatMulInteger, one scale per tensor) on tiny.en: as fast or
faster, and the shared clips' goldens stay exact on 7 of 8 clips against 3 of 8.

The function works on whatever graph files the folder holds (``*.onnx``, external data included), so
it follows the exporter. ``<folder>/int8/`` is a complete model folder (its JSON files are copied) and
records the size and modification time of every source graph; a re-exported graph is re-quantized.
"""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from xdna_ep.errors import ModelError

log = logging.getLogger(__name__)

COMPUTE_TYPES = ("float32", "int8")  # faster-whisper's names
INT8_FOLDER = "int8"
MANIFEST_FILE = "quantized.json"
BITS = 8
BLOCK_SIZE = 32  # weights per scale along K; 128 is ORT's default, 32 keeps the goldens closer
ACCURACY_LEVEL = 4  # MatMulNBits computes with int8 activations (0 would dequantize to fp32: 4x slower)
METHOD = f"MatMulNBits bits={BITS} block_size={BLOCK_SIZE} symmetric accuracy_level={ACCURACY_LEVEL}"


def check_compute_type(compute_type: str, device: str) -> None:
    """Refuse a compute type the device cannot honour, naming why.

    int8 is a CPU compute type: the NPU path (``sim``, ``npu``, and ``auto``, which may pick the NPU)
    computes in bf16 with fp32 accumulation (``precision`` bf16 or accurate), never in int8.
    """
    if compute_type not in COMPUTE_TYPES:
        raise ValueError(f"unknown compute_type {compute_type!r}; expected one of {', '.join(COMPUTE_TYPES)}")
    if compute_type == "int8" and device != "cpu":
        raise ValueError(
            f"compute_type 'int8' quantizes the CPU graphs and needs device 'cpu', not {device!r}: "
            "the NPU path computes in bf16 (precision bf16 or accurate)"
        )


def _sources(folder: Path) -> dict[str, list[int]]:
    """Graph file -> [size, mtime_ns]: what the cached int8 graphs were made from."""
    return {
        path.name: [path.stat().st_size, path.stat().st_mtime_ns] for path in sorted(folder.glob("*.onnx"))
    }


def _is_current(folder: Path, target: Path) -> bool:
    try:
        manifest = json.loads((target / MANIFEST_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return manifest.get("method") == METHOD and manifest.get("sources") == _sources(folder)


@contextmanager
def _lock(folder: Path):
    """One quantization per model folder at a time, across processes."""
    with open(folder / f".{INT8_FOLDER}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def quantize_graph(source: Path, target: Path) -> int:
    """Write ``source`` with its constant-weight MatMuls as 8-bit MatMulNBits to ``target``; return how many."""
    import onnx
    from google.protobuf.message import DecodeError

    root = logging.getLogger()
    handlers, root_level = list(root.handlers), root.level
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    root.handlers[:] = handlers  # that module calls logging.basicConfig(level=INFO) when imported
    root.setLevel(root_level)

    try:
        model = onnx.load(str(source))
    except (OSError, DecodeError) as error:
        raise ModelError(f"cannot read {source} to quantize it: {error}") from None
    config = DefaultWeightOnlyQuantConfig(
        block_size=BLOCK_SIZE, is_symmetric=True, accuracy_level=ACCURACY_LEVEL, bits=BITS, op_types_to_quantize=("MatMul",)
    )
    quantizer = MatMulNBitsQuantizer(model, algo_config=config)
    quiet = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # it logs every node it skips at INFO
    try:
        quantizer.process()
    finally:
        quiet.setLevel(level)
    quantized = quantizer.model.model
    large = quantized.ByteSize() > 1_900_000_000  # protobuf's 2 GB limit: weights go to a side file
    onnx.save(quantized, str(target), save_as_external_data=large, location=target.name + ".data")
    return sum(node.op_type == "MatMulNBits" for node in quantized.graph.node)


def int8_folder(folder: str | Path) -> Path:
    """The int8 copy of the exported model ``folder``: ``<folder>/int8/``, quantized on first use."""
    folder = Path(folder)
    target = folder / INT8_FOLDER
    if _is_current(folder, target):
        return target
    graphs = sorted(folder.glob("*.onnx"))
    if not graphs:
        raise ModelError(f"model folder {folder} holds no ONNX graph to quantize")
    try:
        with _lock(folder):
            if _is_current(folder, target):  # another process did it while we waited
                return target
            started = time.perf_counter()
            print(f"quantizing {folder.name} to int8 (once, into {target}) ...", file=sys.stderr, flush=True)
            with tempfile.TemporaryDirectory(dir=folder, prefix=f".{INT8_FOLDER}-") as staging:
                staging = Path(staging)
                counts = {graph.name: quantize_graph(graph, staging / graph.name) for graph in graphs}
                for extra in folder.glob("*.json"):
                    shutil.copyfile(extra, staging / extra.name)
                manifest = {"method": METHOD, "sources": _sources(folder), "matmuls_quantized": counts}
                (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
                if target.exists():
                    shutil.rmtree(target)
                staging.chmod(0o755)  # TemporaryDirectory made it private
                staging.rename(target)
                staging.mkdir()  # TemporaryDirectory removes its folder on exit
    except OSError as error:
        raise ModelError(f"cannot write the int8 model into {target}: {error}") from None
    print(f"quantized {folder.name} in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return target
