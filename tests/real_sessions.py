"""Helpers of the tests that run real Whisper sessions: the exported models, real inputs (a real
log-mel, real decoder states), and an executor that computes each fused node with the very ONNX ops
the exporter wrote, so that a rewrite is checked for the graph surgery alone, free of the fp32 noise
of a different kernel library."""

from __future__ import annotations

import ctypes
import gc
import json
import math
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from xdna_ep.ep.executor import Executor

ROOT = Path(__file__).resolve().parents[1]
AUDIO = ROOT.parent / "shared" / "audio"
SESSIONS = ("encoder_model", "decoder_model", "decoder_with_past_model")


class OneModel:
    """Loaded models by their settings, one held at a time.

    A Whisper model on the simulated NPU takes 1.5 GB (tiny.en, and about as much for base); a
    module-level dict of them lives until the test session ends, and the suite's peak memory with it.
    Tests that use it are ordered so each setting loads once; ``clear`` at the end of the module.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._model = None

    def get(self, key: tuple, load):
        """The model of ``key``, from ``load()`` unless it is the one held (the previous one is released first)."""
        if key != self._key:
            self.clear()
            self._model, self._key = load(), key
        return self._model

    def clear(self) -> None:
        self._model = self._key = None
        release_memory()


def release_memory() -> None:
    """Collect what was dropped and hand the freed heap back to the OS.

    Sessions and compiled weights sit in reference cycles; and glibc keeps freed memory in its
    arenas (measured: a released tiny.en sim model left 682 MiB of RSS, 390 MiB after malloc_trim).
    """
    gc.collect()
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def model_folder(name: str) -> Path:
    """The exported model folder (exported on first use from the packaged weights).

    A failed export (its self-check included) is a test failure, never a skip: the test extra installs
    the weight packages, so a ModelError here is a product error.
    """
    from xdna_ep.models.registry import ensure_model

    return Path(ensure_model(name))


def whisper_config(folder: Path) -> dict:
    return json.loads((folder / "whisper_config.json").read_text())


def plain_options() -> ort.SessionOptions:
    """ONNX Runtime with its own graph optimizations off (pass tests compare with these)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return options


def run_x(model, x: np.ndarray, options: ort.SessionOptions | None = None) -> np.ndarray:
    """Run a one-input ("x") one-output model on the CPU EP (optimizations off unless ``options``)."""
    session = ort.InferenceSession(model.SerializeToString(), options or plain_options(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def real_inputs(folder: Path, decoder: Path | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Real feeds for the three sessions: the log-mel of jfk.wav, its encoder states, and the decoder
    states after the prompt (start of transcript + no timestamps + 'And'); the past from ``decoder``
    (a variant of ``decoder_model.onnx`` with a cache of its own shape) when given."""
    from xdna_ep.audio import log_mel_spectrogram, pad_or_trim

    config = whisper_config(folder)
    mel = pad_or_trim(log_mel_spectrogram(str(AUDIO / "jfk.wav")))[None].astype(np.float32)  # (1, 80, 3000)
    options = plain_options()
    encoder = ort.InferenceSession(str(folder / "encoder_model.onnx"), options, providers=["CPUExecutionProvider"])
    states = encoder.run(None, {"input_features": mel})[0]  # (1, 1500, d)
    special = config["special_tokens"]
    prompt = [special["sot"]] + ([] if not config["is_multilingual"] else [special["sot"] + 1, special["transcribe"]])
    prompt = np.array([prompt + [special["no_timestamps"], 400]], dtype=np.int64)  # 400: a text token
    decoder = ort.InferenceSession(str(decoder or folder / "decoder_model.onnx"), options, providers=["CPUExecutionProvider"])
    outputs = decoder.run(None, {"input_ids": prompt, "encoder_hidden_states": states})
    names = [output.name for output in decoder.get_outputs()]
    past = {
        name.replace("present", "past_key_values"): value
        for name, value in zip(names, outputs)
        if name.startswith("present")
    }
    next_token = np.array([[int(outputs[0][0, -1].argmax())]], dtype=np.int64)
    return {
        "encoder_model": {"input_features": mel},
        "decoder_model": {"input_ids": prompt, "encoder_hidden_states": states},
        "decoder_with_past_model": {"input_ids": next_token, **past},
    }


class OrtKernelExecutor(Executor):
    """Runs each fused node as the exporter's own op sequence on ONNX Runtime's CPU kernels.

    MatMul(x, W) -> Add(b, .) -> Div(., sqrt 2) / Erf / Add 1 / Mul x / Mul 0.5;
    Mul(q, scale) -> MatMul(., K^T) -> Add(mask) -> Softmax -> MatMul(., V); Softmax.
    One small session per node, weights as initializers (as in the exported graph).
    """

    name = "ort-kernels"

    def __init__(self) -> None:
        self.weights: dict[str, np.ndarray] = {}
        self._sessions: dict[tuple, ort.InferenceSession] = {}

    def add_weight(self, key: str, array: np.ndarray) -> None:
        self.weights[key] = array

    def _session(self, key: tuple, nodes, inputs, initializers) -> ort.InferenceSession:
        if key not in self._sessions:
            output = helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)
            graph = helper.make_graph(nodes, "node", inputs, [output], initializers)
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
            model.ir_version = 10
            self._sessions[key] = ort.InferenceSession(
                model.SerializeToString(), plain_options(), providers=["CPUExecutionProvider"]
            )
        return self._sessions[key]

    def matmul(self, node, x, weight_key, bias_key, activation):
        def make(op, inputs, output, value=None):
            if value is not None:
                constant = helper.make_node("Constant", [], [output + "_c"], value=numpy_helper.from_array(np.array(value, np.float32)))
                return [constant, helper.make_node(op, [*inputs, output + "_c"], [output])]
            return [helper.make_node(op, inputs, [output])]

        nodes = make("MatMul", ["x", "w"], "h")
        initializers = [numpy_helper.from_array(self.weights[weight_key], "w")]
        if bias_key:
            initializers.append(numpy_helper.from_array(self.weights[bias_key], "b"))
            nodes += make("Add", ["b", "h"], "hb")
        h = nodes[-1].output[0]
        if activation == "gelu":
            nodes += make("Div", [h], "d", math.sqrt(2.0)) + make("Erf", ["d"], "e") + make("Add", ["e"], "e1", 1.0)
            nodes += make("Mul", [h, "e1"], "m") + make("Mul", ["m"], "y", 0.5)
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)]
        return self._session(("matmul", node), nodes, inputs, initializers).run(None, {"x": x})[0]

    def attention(self, node, q, k, v, scale, causal):
        n_q, n_kv = q.shape[2], k.shape[2]
        visible = np.arange(n_kv)[None, :] <= (n_kv - n_q + np.arange(n_q))[:, None]
        visible |= not causal
        mask = np.where(visible, np.float32(0.0), np.float32(-np.inf)).astype(np.float32)
        nodes = [
            helper.make_node("Constant", [], ["s"], value=numpy_helper.from_array(np.array(scale, np.float32))),
            helper.make_node("Mul", ["q", "s"], ["qs"]),
            helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
            helper.make_node("MatMul", ["qs", "kt"], ["scores"]),
            helper.make_node("Add", ["scores", "mask"], ["masked"]),
            helper.make_node("Softmax", ["masked"], ["p"], axis=-1),
            helper.make_node("MatMul", ["p", "v"], ["o"]),
        ]
        inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("q", "k", "v", "mask")]
        session = self._session(("attention",), nodes, inputs, [])
        return session.run(None, {"q": q, "k": k, "v": v, "mask": mask})[0]

    def softmax(self, node, x, axis):
        nodes = [helper.make_node("Softmax", ["x"], ["y"], axis=axis)]
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)]
        return self._session(("softmax", axis), nodes, inputs, []).run(None, {"x": x})[0]
