"""The reference exporter: the same NumPy weights through PyTorch and optimum, the way users export Whisper.

Needs the export extra (torch, transformers, optimum-onnx). ``models/build.py`` writes the graphs the
pipeline uses by default; this one is kept as the reference they are compared with, and as an option
(``xdna-ep models export NAME --exporter optimum``).

    NumPy weights -> transformers WhisperForConditionalGeneration (fp32)
      -> optimum ONNX export, task automatic-speech-recognition-with-past (no decoder merge)
      -> the tied output projection stored once (see ``share_output_projection``)
      -> both decoders over one decoder_weights.bin (``build.save_sharing_weights``)
      -> checked against PyTorch on the log-mel of a real clip
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx

from xdna_ep.errors import ModelError
from xdna_ep.models import registry
from xdna_ep.models.build import ONNX_OPSET, save_sharing_weights
from xdna_ep.models.convert import WhisperDims, dims_from_hf_config, hf_config, special_token_ids
from xdna_ep.models.export import validation_audio

MAX_IR_VERSION = 13
# Accepted |ONNX - PyTorch| per element, fp32 vs fp32: VALIDATION_ATOL + VALIDATION_RTOL * |PyTorch|.
# Measured worst: 2e-5 (tiny.en), 7.7e-4 (base encoder states, whose values reach tens).
VALIDATION_ATOL = 1e-3
VALIDATION_RTOL = 1e-3


@contextmanager
def _quiet_exporters():
    """Hide the tracer and deprecation warnings torch, transformers and optimum print while exporting.

    They concern the exporter's internals, not the user's model; the export is checked on real
    input instead (``validate_export``).
    """
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        transformers_logging.set_verbosity(verbosity)


def optimum_available() -> bool:
    """Whether the export extra (torch, transformers, optimum-onnx) is importable."""
    import importlib.util

    return all(importlib.util.find_spec(module) for module in ("torch", "transformers", "optimum.exporters.onnx"))


def torch_model(weights: dict[str, np.ndarray], dims: WhisperDims, extra: dict):
    """A ``WhisperForConditionalGeneration`` in fp32 eval mode holding ``weights`` (transformers' names)."""
    import torch
    from transformers import WhisperForConditionalGeneration

    config = hf_config(dims, extra.get("suppress_ids", []), extra.get("suppress_ids_begin", []))
    model = WhisperForConditionalGeneration(config)
    state = {name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in weights.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    # proj_out.weight is tied to the token embedding and therefore absent from the state dict.
    missing = [name for name in missing if name != "proj_out.weight"]
    unexpected = [name for name in unexpected if name != "proj_out.weight"]
    if missing or unexpected:
        raise ModelError(f"weights do not fit the Whisper model: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return model.eval()


def export_with_optimum(weights: dict[str, np.ndarray], dims: WhisperDims, extra: dict, final: Path, scratch: Path) -> dict:
    """Write the three graphs into ``final`` through optimum; return the check against PyTorch."""
    if not optimum_available():
        raise ModelError(f"the optimum exporter is not installed: {registry.EXPORT_INSTALL_HINT}")
    with _quiet_exporters():
        model = torch_model(weights, dims, extra)
        onnx_dir = _run_optimum(model, scratch)
    for file in (registry.DECODER_FILE, registry.DECODER_WITH_PAST_FILE):
        share_output_projection(onnx_dir / file)
    encoder = onnx.load(str(onnx_dir / registry.ENCODER_FILE))
    encoder.ir_version = min(encoder.ir_version, MAX_IR_VERSION)
    onnx.save(encoder, str(final / registry.ENCODER_FILE))
    decoders = {}
    for file in (registry.DECODER_FILE, registry.DECODER_WITH_PAST_FILE):
        decoders[file] = onnx.load(str(onnx_dir / file))
        decoders[file].ir_version = min(decoders[file].ir_version, MAX_IR_VERSION)
    save_sharing_weights(decoders, final)
    for file in (registry.ENCODER_FILE, registry.DECODER_FILE, registry.DECODER_WITH_PAST_FILE):
        onnx.checker.check_model(str(final / file))
    return validate_export(model, final)


def _run_optimum(model, scratch: Path) -> Path:
    from optimum.exporters.onnx import main_export

    hf_dir, onnx_dir = scratch / "hf", scratch / "onnx"
    model.save_pretrained(hf_dir)
    main_export(
        str(hf_dir),
        output=str(onnx_dir),
        task="automatic-speech-recognition-with-past",
        opset=ONNX_OPSET,
        device="cpu",
        no_post_process=True,  # keep decoder_model + decoder_with_past_model, no merged If graph
        do_validation=False,  # validated below on a real log-mel with a stated tolerance
    )
    return onnx_dir


def share_output_projection(path: Path) -> None:
    """Store the tied token embedding once: the exporter folds ``proj_out`` into a transposed copy.

    Before: ``Gather(E, ids)`` embeds tokens and ``MatMul(h, E^T)`` with ``E^T`` a second initializer
    (n_vocab x d floats, 80 MB for tiny.en, 105 MB for base). After: the embedding reads the one
    transposed matrix, ``Transpose(Gather(E^T, ids, axis=1), perm=(1, 2, 0))``, and ``E`` is dropped.
    """
    model = onnx.load(str(path))
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    embedding = next((t for t in graph.initializer if t.name == "model.decoder.embed_tokens.weight"), None)
    if embedding is None:
        return
    n_vocab, d_model = embedding.dims
    embedding_array = onnx.numpy_helper.to_array(embedding)
    transposed_name = None
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in initializers:
            candidate = initializers[node.input[1]]
            if list(candidate.dims) == [d_model, n_vocab] and np.array_equal(
                onnx.numpy_helper.to_array(candidate), embedding_array.T
            ):
                transposed_name = candidate.name
                break
    if transposed_name is None:
        return
    gathers = [n for n in graph.node if n.op_type == "Gather" and n.input[0] == embedding.name]
    users = [n for n in graph.node if embedding.name in n.input]
    if len(gathers) != 1 or len(users) != 1:
        return
    gather = gathers[0]
    gathered = gather.output[0] + "_by_vocab_column"
    index = list(graph.node).index(gather)
    new_gather = onnx.helper.make_node(
        "Gather", [transposed_name, gather.input[1]], [gathered], axis=1, name=gather.name + "_by_column"
    )
    transpose = onnx.helper.make_node(
        "Transpose", [gathered], [gather.output[0]], perm=[1, 2, 0], name=gather.name + "_to_batch_major"
    )  # (d, batch, seq) -> (batch, seq, d)
    graph.node.remove(gather)
    graph.node.insert(index, transpose)
    graph.node.insert(index, new_gather)
    graph.initializer.remove(embedding)
    onnx.save(model, str(path))


def _real_features(n_mels: int) -> np.ndarray:
    from xdna_ep.audio import N_FRAMES, load_audio, log_mel_spectrogram, pad_or_trim

    mel = log_mel_spectrogram(load_audio(validation_audio()), n_mels=n_mels)
    return pad_or_trim(mel, N_FRAMES)[None].astype(np.float32)  # (1, n_mels, 3000)


def validate_export(model, onnx_dir: Path) -> dict:
    """Compare the ONNX models with PyTorch on a real clip; raise if any output differs by > VALIDATION_ATOL.

    Encoder: the clip's log-mel (1, n_mels, 3000). First decoder step: the prompt of an English
    transcription. Decoder with past: one more token fed with the first step's cache.
    """
    import onnxruntime as ort
    import torch

    dims = dims_from_hf_config(model.config)
    ids = special_token_ids(dims.n_vocab)
    prompt = [ids["sot"]] + ([ids["sot"] + 1] if dims.is_multilingual else []) + [ids["transcribe"], ids["no_timestamps"]]
    features = _real_features(dims.n_mels)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL

    def session(file: str):
        return ort.InferenceSession(str(onnx_dir / file), options, providers=["CPUExecutionProvider"])

    with torch.no_grad():
        torch_states = model.model.encoder(torch.from_numpy(features)).last_hidden_state
        torch_first = model(
            encoder_outputs=(torch_states,), decoder_input_ids=torch.tensor([prompt]), use_cache=True
        )
        next_token = int(torch_first.logits[0, -1].argmax())
        torch_second = model(
            encoder_outputs=(torch_states,),
            decoder_input_ids=torch.tensor([[next_token]]),
            past_key_values=torch_first.past_key_values,
            use_cache=True,
        )
    states = session(registry.ENCODER_FILE).run(None, {"input_features": features})[0]
    decoder = session(registry.DECODER_FILE)
    first = dict(
        zip(
            [o.name for o in decoder.get_outputs()],
            decoder.run(None, {"input_ids": np.array([prompt], dtype=np.int64), "encoder_hidden_states": states}),
        )
    )
    with_past = session(registry.DECODER_WITH_PAST_FILE)
    feeds = {"input_ids": np.array([[next_token]], dtype=np.int64)}
    for name in (i.name for i in with_past.get_inputs() if i.name.startswith("past_key_values.")):
        feeds[name] = first[name.replace("past_key_values.", "present.")]
    second = with_past.run(["logits"], feeds)[0]
    pairs = {
        "encoder": (states, torch_states.numpy()),
        "decoder": (first["logits"], torch_first.logits.numpy()),
        "decoder_with_past": (second, torch_second.logits.numpy()),
    }
    report: dict = {"atol": VALIDATION_ATOL, "rtol": VALIDATION_RTOL, "audio": validation_audio().name}
    failed = []
    for name, (exported, reference) in pairs.items():
        difference = np.abs(exported - reference)
        report[f"{name}_max_abs_diff"] = float(difference.max())
        if not np.all(difference <= VALIDATION_ATOL + VALIDATION_RTOL * np.abs(reference)):
            failed.append(f"{name} (max abs diff {difference.max():.2e})")
    if failed:
        raise ModelError(
            f"exported ONNX models differ from PyTorch beyond atol {VALIDATION_ATOL} + rtol {VALIDATION_RTOL}: "
            + ", ".join(failed)
        )
    return report
