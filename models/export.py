"""Build Whisper ONNX models from real weights, the way users export Whisper, and check them.

    CTranslate2 model.bin (packaged or --from DIR) or a Hugging Face Whisper folder
      -> transformers WhisperForConditionalGeneration (fp32)
      -> optimum ONNX export, task automatic-speech-recognition-with-past (no decoder merge)
      -> the tied output projection stored once (see ``share_output_projection``)
      -> checked against PyTorch on the log-mel of a real clip
      -> $XDNA_EP_HOME/models/<name>/{encoder_model,decoder_model,decoder_with_past_model}.onnx,
         tokenizer.json, whisper_config.json
"""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx

from xdna_ep.errors import ModelError
from xdna_ep.models import registry
from xdna_ep.models.convert import WhisperDims, build_hf_model, dims_from_hf_config, special_token_ids
from xdna_ep.models.ct2 import read_model_bin

log = logging.getLogger(__name__)

ONNX_OPSET = 18  # optimum's default for Whisper; ONNX Runtime 1.31 loads opset <= 26 and IR <= 13
MAX_IR_VERSION = 13
# Accepted |ONNX - PyTorch| per element, fp32 vs fp32: VALIDATION_ATOL + VALIDATION_RTOL * |PyTorch|.
# Measured worst: 2e-5 (tiny.en), 7.7e-4 (base encoder states, whose values reach tens).
VALIDATION_ATOL = 1e-3
VALIDATION_RTOL = 1e-3


def _validation_audio() -> Path:
    import xdna_ep

    return Path(xdna_ep.__file__).parent / "data" / "jfk.wav"


@contextmanager
def _export_lock(target: Path):
    """One export per model at a time, across processes."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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


def export_model(name: str, source: Path | None = None, force: bool = False) -> Path:
    """Export model ``name`` into the cache (from its packaged weights, or from ``source``); return its folder."""
    target = registry.models_dir() / name
    with _export_lock(target):
        if not force and not registry.missing_files(target):
            return target
        started = time.perf_counter()
        with _quiet_exporters():
            hf_model, tokenizer_json, extra, origin = _load_weights(name, source)
        log.warning("exporting Whisper '%s' from %s to ONNX (first use; takes a minute)", name, origin)
        with tempfile.TemporaryDirectory(prefix=f"xdna-ep-export-{name}-", dir=target.parent) as scratch:
            scratch = Path(scratch)
            with _quiet_exporters():
                onnx_dir = _run_optimum(hf_model, scratch)
            for file in (registry.DECODER_FILE, registry.DECODER_WITH_PAST_FILE):
                share_output_projection(onnx_dir / file)
            for file in (registry.ENCODER_FILE, registry.DECODER_FILE, registry.DECODER_WITH_PAST_FILE):
                _check_loadable(onnx_dir / file)
            validation = validate_export(hf_model, onnx_dir)
            shutil.copyfile(tokenizer_json, onnx_dir / registry.TOKENIZER_FILE)
            dims = dims_from_hf_config(hf_model.config)
            config = _config_json(name, dims, extra, origin, validation, time.perf_counter() - started)
            (onnx_dir / registry.CONFIG_FILE).write_text(json.dumps(config, indent=1))
            final = scratch / "final"
            final.mkdir()
            for file in registry.MODEL_FILES:
                shutil.move(onnx_dir / file, final / file)
            if target.exists():
                shutil.rmtree(target)
            final.rename(target)
        log.warning("exported '%s' to %s in %.0f s", name, target, time.perf_counter() - started)
        return target


def _load_weights(name: str, source: Path | None):
    """(HF model, tokenizer.json path, extra config, description of the origin)."""
    if source is None:
        if name not in registry.PACKAGED:
            raise ModelError(f"unknown model '{name}': known models are {', '.join(registry.PACKAGED)} (or give --from DIR)")
        packaged = registry.PACKAGED[name]
        folder = packaged.aux_folder()
        weight_files = packaged.weight_files()
        origin = f"package {' + '.join(packaged.pip_names)}"
        return _from_ct2(weight_files, folder) + (origin,)
    source = Path(source).expanduser()
    if not source.is_dir():
        raise ModelError(f"--from expects a folder with Whisper weights, got {source}")
    if (source / "model.bin").is_file():
        return _from_ct2([source / "model.bin"], source) + (f"CTranslate2 folder {source}",)
    if (source / "config.json").is_file():
        return _from_hugging_face(source) + (f"Hugging Face folder {source}",)
    raise ModelError(
        f"{source} holds neither a CTranslate2 model.bin nor a Hugging Face config.json: not a Whisper weights folder"
    )


def _from_ct2(weight_files: list[Path], folder: Path):
    ct2 = read_model_bin(weight_files)
    config_path = folder / "config.json"
    tokenizer_json = folder / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise ModelError(f"weights folder {folder} has no tokenizer.json")
    ct2_config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    suppress = ct2_config.get("suppress_ids", [])
    begin_suppress = ct2_config.get("suppress_ids_begin", [])
    model = build_hf_model(ct2, suppress, begin_suppress)
    extra = {
        "suppress_ids": suppress,
        "suppress_ids_begin": begin_suppress,
        "lang_ids": ct2_config.get("lang_ids", []),
        "alignment_heads": ct2_config.get("alignment_heads", []),
    }
    return model, tokenizer_json, extra


def _from_hugging_face(folder: Path):
    from transformers import WhisperForConditionalGeneration

    tokenizer_json = folder / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise ModelError(f"Hugging Face folder {folder} has no tokenizer.json")
    try:
        model = WhisperForConditionalGeneration.from_pretrained(folder, local_files_only=True, dtype="float32")
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot load a Whisper model from {folder}: {error}") from None
    generation = getattr(model, "generation_config", None)
    extra = {
        "suppress_ids": list(getattr(generation, "suppress_tokens", None) or []),
        "suppress_ids_begin": list(getattr(generation, "begin_suppress_tokens", None) or []),
        "lang_ids": sorted((getattr(generation, "lang_to_id", None) or {}).values()),
        "alignment_heads": list(getattr(generation, "alignment_heads", None) or []),
    }
    return model.eval(), tokenizer_json, extra


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


def _check_loadable(path: Path) -> None:
    model = onnx.load(str(path), load_external_data=False)
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION
        onnx.save(model, str(path))
    onnx.checker.check_model(str(path))


def _real_features(n_mels: int) -> np.ndarray:
    from xdna_ep.audio import N_FRAMES, load_audio, log_mel_spectrogram, pad_or_trim

    mel = log_mel_spectrogram(load_audio(_validation_audio()), n_mels=n_mels)
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
    report: dict = {"atol": VALIDATION_ATOL, "rtol": VALIDATION_RTOL, "audio": _validation_audio().name}
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


def _config_json(name: str, dims: WhisperDims, extra: dict, origin: str, validation: dict, seconds: float) -> dict:
    versions = {}
    for package in ("torch", "transformers", "optimum-onnx", "onnx", "onnxruntime"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return {
        "name": name,
        **asdict(dims),
        "is_multilingual": dims.is_multilingual,
        "special_tokens": special_token_ids(dims.n_vocab),
        **extra,
        "source": origin,
        "export": {"opset": ONNX_OPSET, "seconds": round(seconds, 1), "versions": versions},
        "validation": validation,
    }
