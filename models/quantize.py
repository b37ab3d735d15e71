"""int8 weights for the CPU path: every ONNX graph of an exported model folder, its MatMul weights
quantized to 8 bits by ONNX Runtime, cached in ``<folder>/int8/``.

    <folder>/decoder*.onnx  MatMul(x, W fp32)
      -> int8/decoder*.onnx  MatMulNBits(x, W int8 in blocks of 16 along K, one fp32 scale per block)
    <folder>/encoder_model.onnx  MatMul(LayerNorm(...), W fp32)   q/k/v projections, fc1
    <folder>/decoder_model.onnx  MatMul(encoder_hidden_states, W fp32)   cross-attention K/V projections
      -> DynamicQuantizeLinear + MatMulInteger (W int8 per output channel, activations uint8 with one
         scale per tensor, computed at run time)

Decoders: weight-only, symmetric, round to nearest (ONNX Runtime's ``MatMulNBitsQuantizer``,
``bits=8``), with ``accuracy_level=4``: the kernel quantizes the activations to int8 per block too and
multiplies in int8, which is what makes it faster than fp32 here (``accuracy_level=0``, fp32 compute
over dequantized weights, measured 4x slower than fp32 on tiny.en). Only MatMuls whose weight is a 2-D
initializer change; embeddings (Gather), convolutions, layer norms and attention scores stay fp32.

Encoder: MatMulNBits ran its 1500-row GEMMs no faster than fp32 at any block size (16-128); dynamic
quantization runs them in int8 with the activations quantized at run time. One
activation scale per tensor is coarse, so it is used only where the rows were just normalised (the
MatMuls a LayerNormalization feeds: ``normalised_matmuls``); fc2 (after GELU) and out_proj (after
attention) stay float32. Measured on the shared clips, greedy (word error rate as
``bench-transcribe --wer`` computes it; goldens as the tests compare them): every encoder MatMul
dynamic moved base's WER from 1.38 to 2.07 % and kept 5 of 8 goldens; the LayerNorm-fed ones alone
keep base at 1.38 % with 8 of 8 goldens (tiny.en: 4.14 %, 7 of 8), and the encoder takes 0.80x its
fp32 time (the ``encode`` of ``python examples/time_split.py tiny.en int8|float32`` on a 62-s
recording: 241 vs 300 ms).

The prompt decoder's cross-attention K/V projections are the same kind of work (1500-row GEMMs over
the encoder's final LayerNorm output), once per window: as MatMulNBits they took 25 of the 33 ms of
base's first decoder step (ONNX Runtime's profiler, ``enable_profiling`` on a decoder_model session
fed jfk.wav's encoder states, by a script not kept); dynamically quantized, base int8 transcribes
jfk.wav in 0.93x the time with the same tokens and goldens (``python examples/compare_folders.py``
against a copy of the folder holding the previous quantizer's int8 graphs, commit f1e94d9).

The function works on whatever graph files the folder holds (``*.onnx``, external data included), so
it follows the exporter. ``<folder>/int8/`` is a complete model folder (its JSON files are copied);
the weights of all its graphs are in one ``weights.bin`` that holds each distinct tensor once (the
two decoders' shared weights are stored once). It records the size and modification time of every
source file; a re-exported model is re-quantized.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from xdna_ep.errors import ModelError

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

COMPUTE_TYPES = ("float32", "int8")  # faster-whisper's names
INT8_FOLDER = "int8"
MANIFEST_FILE = "quantized.json"
WEIGHTS_FILE = "weights.bin"  # every weight of the int8 graphs, each distinct tensor once
MIN_EXTERNAL_BYTES = 1024  # smaller initializers stay inside their graph
PAGE_BYTES = 4096  # side-file offsets are page-aligned, so ONNX Runtime can map them
BITS = 8
# weights per scale along K (ORT's default is 128). With the direct exporter's graphs, blocks of 32 cost
# base one word more than float32 on the shared clips (WER 2.07 vs 1.38 %); blocks of 16 none
BLOCK_SIZE = 16
ACCURACY_LEVEL = 4  # MatMulNBits computes with int8 activations (0 would dequantize to fp32: 4x slower)
METHOD = (
    f"MatMulNBits bits={BITS} block_size={BLOCK_SIZE} symmetric accuracy_level={ACCURACY_LEVEL}; "
    f"encoder: LayerNorm-fed MatMuls dynamic int8 per channel, the others float32; "
    f"decoder_model: cross-attention K/V projections dynamic int8 per channel; one {WEIGHTS_FILE}"
)


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
    """File of the model folder -> [size, mtime_ns]: what the cached int8 graphs were made from."""
    files = sorted(path for path in folder.iterdir() if path.is_file() and not path.name.startswith("."))
    return {path.name: [path.stat().st_size, path.stat().st_mtime_ns] for path in files}


def _is_current(folder: Path, target: Path) -> bool:
    try:
        manifest = json.loads((target / MANIFEST_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    # a graph or the weights file gone or cut short (a full disk, a hand edit): quantized again
    weights = target / WEIGHTS_FILE
    complete = all((target / name).is_file() for name in manifest.get("matmuls_quantized", {})) and (
        weights.is_file() and weights.stat().st_size == manifest.get("weights_bytes")
    )
    return complete and manifest.get("method") == METHOD and manifest.get("sources") == _sources(folder)


@contextmanager
def _lock(folder: Path):
    """One quantization per model folder at a time, across processes."""
    with open(folder / f".{INT8_FOLDER}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _log_level(name: str | None, level: int):
    """Logger ``name`` (None: the root logger) at ``level`` for the duration, then as it was."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


def normalised_matmuls(model: onnx.ModelProto, role: str) -> list[str]:
    """Names of the MatMuls with a constant weight whose activation rows are normalised, so that one int8
    scale per tensor (dynamic quantization) keeps them:

    - in an encoder, the MatMuls a LayerNormalization feeds (q/k/v projections and fc1). fc2 (after GELU)
      and out_proj (after attention) have outliers: quantized that way too, base's word error rate on the
      shared clips went from 1.38 to 2.07 % and 3 of its 8 goldens changed;
    - in the prompt decoder, the MatMuls that read the encoder states input (the cross-attention K/V
      projections over all n_audio_ctx positions; the states are the encoder's final LayerNormalization).
      Its other MatMuls stay MatMulNBits, whose weights decoder_with_past_model shares.
    """
    from xdna_ep.graph_passes.shapes import DECODER, ENCODER, classify_inputs

    weights = {tensor.name for tensor in model.graph.initializer}
    if role == ENCODER:
        producers = {output: node for node in model.graph.node for output in node.output}
        normalised = {name for name, node in producers.items() if node.op_type == "LayerNormalization"}
    elif role == DECODER:
        normalised = {value.name for value in classify_inputs(model).cross_states if len(value.type.tensor_type.shape.dim) == 3}
    else:
        return []
    return [
        node.name for node in model.graph.node
        if node.op_type == "MatMul" and node.input[1] in weights and node.input[0] in normalised
    ]  # fmt: skip


def _quantize_dynamic(model: onnx.ModelProto, nodes: list[str]) -> onnx.ModelProto:
    """``model`` with ``nodes`` as dynamically quantized MatMuls (int8 weights per output channel, uint8
    activations per tensor computed at run time: DynamicQuantizeLinear + MatMulInteger, which ONNX
    Runtime fuses to DynamicQuantizeMatMul)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="xdna-ep-int8-") as scratch:
        target = Path(scratch) / "out.onnx"  # it writes its result to a file only
        # it warns that no pre-processing ran (shape inference; not needed here)
        with _log_level(None, logging.ERROR):
            quantize_dynamic(
                model, str(target), per_channel=True, weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes, use_external_data_format=True,
            )  # fmt: skip
        return onnx.load(str(target))


def quantize_graph(source: Path) -> onnx.ModelProto:
    """``source`` with its constant-weight MatMuls in 8 bits (external data loaded): in an encoder, the
    LayerNorm-fed ones dynamically and the others left float32; in a decoder, the ones over the encoder
    states dynamically and every other one as MatMulNBits (``normalised_matmuls``)."""
    import onnx
    from google.protobuf.message import DecodeError

    from xdna_ep.graph_passes.shapes import ENCODER, session_role

    root = logging.getLogger()
    handlers, root_level = list(root.handlers), root.level
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    root.handlers[:] = handlers  # that module calls logging.basicConfig(level=INFO) when imported
    root.setLevel(root_level)

    try:
        model = onnx.load(str(source))
    except (OSError, DecodeError) as error:
        raise ModelError(f"cannot read {source} to quantize it: {error}") from None
    role = session_role(model)
    dynamic = normalised_matmuls(model, role)
    if dynamic:
        model = _quantize_dynamic(model, dynamic)
    config = DefaultWeightOnlyQuantConfig(
        block_size=BLOCK_SIZE, is_symmetric=True, accuracy_level=ACCURACY_LEVEL, bits=BITS, op_types_to_quantize=("MatMul",)
    )
    # in an encoder, the other MatMuls (fc2, out_proj) stay float32: as MatMulNBits they moved one of
    # base's 145 words on the shared clips (WER 2.07 vs 1.38 %) and ran no faster than float32
    excluded = [node.name for node in model.graph.node if node.op_type == "MatMul"] if role == ENCODER else []
    quantizer = MatMulNBitsQuantizer(model, algo_config=config, nodes_to_exclude=excluded)
    # it logs every node it skips at INFO
    with _log_level("onnxruntime.quantization.matmul_nbits_quantizer", logging.WARNING):
        quantizer.process()
    return quantizer.model.model


def save_sharing_weights(models: dict[str, onnx.ModelProto], folder: Path) -> int:
    """Save ``models`` (file name -> graph) into ``folder`` with their weights in one ``WEIGHTS_FILE``.

    Every initializer of at least ``MIN_EXTERNAL_BYTES`` goes to the side file, and a tensor that
    several graphs hold (the decoders share theirs) is written once, at a page-aligned offset. Returns
    the size of the side file in bytes.
    """
    from onnx.external_data_helper import set_external_data

    stored: dict[tuple, tuple[int, int]] = {}  # (dtype, dims, digest) -> (offset, length)
    with open(folder / WEIGHTS_FILE, "wb") as data:
        for file_name, model in models.items():
            for tensor in model.graph.initializer:
                raw = tensor.raw_data
                if len(raw) < MIN_EXTERNAL_BYTES:
                    continue
                key = (tensor.data_type, tuple(tensor.dims), hashlib.sha256(raw).digest())
                if key not in stored:
                    data.write(b"\0" * (-data.tell() % PAGE_BYTES))
                    stored[key] = (data.tell(), len(raw))
                    data.write(raw)
                offset, length = stored[key]
                set_external_data(tensor, location=WEIGHTS_FILE, offset=offset, length=length)
                tensor.ClearField("raw_data")
            (folder / file_name).write_bytes(model.SerializeToString())
        return data.tell()


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
                models = {graph.name: quantize_graph(graph) for graph in graphs}
                counts = {
                    name: sum(node.op_type in ("MatMulNBits", "MatMulInteger") for node in model.graph.node)
                    for name, model in models.items()
                }
                weights_bytes = save_sharing_weights(models, staging)
                del models
                for extra in folder.glob("*.json"):
                    shutil.copyfile(extra, staging / extra.name)
                manifest = {
                    "method": METHOD, "sources": _sources(folder), "matmuls_quantized": counts, "weights_bytes": weights_bytes,
                }  # fmt: skip
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
