"""Export a Whisper model into the model cache: find its weights, build its ONNX graphs, check them.

    CTranslate2 model.bin (packaged or --from DIR) or a Hugging Face folder (safetensors)
      -> NumPy weights named as transformers names them (``convert.hf_state_dict``)
      -> ``build.write_models``: the three graphs, written directly (exporter "onnx", the default)
         or optimum's export through PyTorch (exporter "optimum", the export extra; the reference)
      -> checked on a real clip: every output finite
      -> $XDNA_EP_HOME/models/<name>/{encoder_model,decoder_model,decoder_with_past_model}.onnx,
         decoder_weights.bin, tokenizer.json, whisper_config.json (with the cache format version)
"""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from xdna_ep.errors import ModelError
from xdna_ep.models import registry
from xdna_ep.models.convert import WhisperDims, dims_from_ct2, hf_state_dict, special_token_ids
from xdna_ep.models.ct2 import read_model_bin

log = logging.getLogger(__name__)

EXPORTERS = ("onnx", "optimum")  # onnx: models/build.py, no PyTorch; optimum: the reference, needs the export extra


@dataclass(frozen=True)
class WeightsSource:
    """Where a model's weights are: ``kind`` "ct2" (``files`` join into model.bin) or "hf" (a
    Hugging Face folder); ``folder`` holds tokenizer.json and config.json; ``origin`` says it in words."""

    kind: str
    files: tuple[Path, ...]
    folder: Path
    origin: str


def validation_audio() -> Path:
    """The clip exports are checked on (the packaged jfk.wav)."""
    import xdna_ep

    return Path(xdna_ep.__file__).parent / "data" / "jfk.wav"


def locate_weights(name: str, source: Path | None = None) -> WeightsSource:
    """The weights of model ``name``: its packages, or the folder ``source``."""
    if source is None:
        if name not in registry.PACKAGED:
            raise ModelError(f"unknown model '{name}': known models are {', '.join(registry.PACKAGED)} (or give --from DIR)")
        packaged = registry.PACKAGED[name]
        origin = f"package {' + '.join(packaged.pip_names)}"
        return WeightsSource("ct2", tuple(packaged.weight_files()), packaged.aux_folder(), origin)
    source = Path(source).expanduser()
    if not source.is_dir():
        raise ModelError(f"--from expects a folder with Whisper weights, got {source}")
    if (source / "model.bin").is_file():
        return WeightsSource("ct2", (source / "model.bin",), source, f"CTranslate2 folder {source}")
    if (source / "config.json").is_file():
        return WeightsSource("hf", (), source, f"Hugging Face folder {source}")
    raise ModelError(
        f"{source} holds neither a CTranslate2 model.bin nor a Hugging Face config.json: not a Whisper weights folder"
    )


def load_weights(source: WeightsSource) -> tuple[dict[str, np.ndarray], WhisperDims, dict]:
    """(float32 weights by transformers' names, dimensions, extra config: suppressed tokens, languages, heads)."""
    if source.kind == "ct2":
        ct2 = read_model_bin(list(source.files))
        dims = dims_from_ct2(ct2)
        config_path = source.folder / "config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        extra = {
            "suppress_ids": config.get("suppress_ids", []),
            "suppress_ids_begin": config.get("suppress_ids_begin", []),
            "lang_ids": config.get("lang_ids", []),
            "alignment_heads": config.get("alignment_heads", []),
        }
        return hf_state_dict(ct2, dims), dims, extra
    return _load_hugging_face(source.folder)


def _load_hugging_face(folder: Path) -> tuple[dict[str, np.ndarray], WhisperDims, dict]:
    """A Hugging Face Whisper folder: config.json, generation_config.json, model*.safetensors (NumPy API)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    config = json.loads((folder / "config.json").read_text())
    if config.get("model_type") != "whisper":
        raise ModelError(f"{folder}/config.json describes a '{config.get('model_type')}' model, not Whisper")
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelError(f"Hugging Face folder {folder} has no *.safetensors weights (PyTorch .bin files need the export extra)")
    weights: dict[str, np.ndarray] = {}
    for file in files:
        try:
            tensors = load_file(file)
        except (SafetensorError, TypeError, ValueError) as error:
            raise ModelError(f"cannot read {file}: {error}") from None
        for key, array in tensors.items():
            weights[key if key.startswith(("model.", "proj_out.")) else f"model.{key}"] = array.astype(np.float32)
    try:
        dims = WhisperDims(
            n_mels=config["num_mel_bins"],
            n_audio_ctx=config["max_source_positions"],
            n_audio_state=config["d_model"],
            n_audio_head=config["encoder_attention_heads"],
            n_audio_layer=config["encoder_layers"],
            n_vocab=config["vocab_size"],
            n_text_ctx=config["max_target_positions"],
            n_text_state=config["d_model"],
            n_text_head=config["decoder_attention_heads"],
            n_text_layer=config["decoder_layers"],
        )
    except KeyError as error:
        raise ModelError(f"{folder}/config.json lacks {error}") from None
    if "proj_out.weight" in weights and not np.array_equal(
        weights["proj_out.weight"], weights.get("model.decoder.embed_tokens.weight")
    ):
        raise ModelError(f"{folder}: proj_out is not tied to the token embedding; this exporter stores them as one")
    generation_path = folder / "generation_config.json"
    generation = json.loads(generation_path.read_text()) if generation_path.is_file() else {}
    extra = {
        "suppress_ids": list(generation.get("suppress_tokens") or config.get("suppress_tokens") or []),
        "suppress_ids_begin": list(generation.get("begin_suppress_tokens") or config.get("begin_suppress_tokens") or []),
        "lang_ids": sorted((generation.get("lang_to_id") or {}).values()),
        "alignment_heads": list(generation.get("alignment_heads") or []),
    }
    return weights, dims, extra


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


def export_model(name: str, source: Path | None = None, force: bool = False, exporter: str = "onnx") -> Path:
    """Export model ``name`` into the cache (from its packaged weights, or from ``source``); return its folder.

    A folder already in the cache in the current format is kept unless ``force``.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; expected one of {', '.join(EXPORTERS)}")
    target = registry.models_dir() / name
    with _export_lock(target):
        if not force and registry.is_current(target):
            return target
        started = time.perf_counter()
        weights_source = locate_weights(name, source)
        tokenizer_json = weights_source.folder / "tokenizer.json"
        if not tokenizer_json.is_file():
            raise ModelError(f"weights folder {weights_source.folder} has no tokenizer.json")
        log.warning("exporting Whisper '%s' from %s to ONNX (%s exporter, first use)", name, weights_source.origin, exporter)
        with tempfile.TemporaryDirectory(prefix=f"xdna-ep-export-{name}-", dir=target.parent) as scratch:
            final = Path(scratch) / "final"
            final.mkdir()
            weights, dims, extra = load_weights(weights_source)
            validation: dict = {}
            if exporter == "onnx":
                from xdna_ep.models.build import write_models

                write_models(weights, dims, final)
            else:
                from xdna_ep.models.export_optimum import export_with_optimum

                validation = export_with_optimum(weights, dims, extra, final, Path(scratch))
            del weights
            check = check_outputs_finite(final, dims)
            shutil.copyfile(tokenizer_json, final / registry.TOKENIZER_FILE)
            seconds = time.perf_counter() - started
            config = _config_json(name, dims, extra, weights_source.origin, exporter, validation, check, seconds)
            (final / registry.CONFIG_FILE).write_text(json.dumps(config, indent=1))
            if target.exists():
                shutil.rmtree(target)
            final.rename(target)
        log.warning("exported '%s' to %s in %.1f s", name, target, time.perf_counter() - started)
        return target


def check_outputs_finite(folder: Path, dims: WhisperDims) -> dict:
    """Run the three graphs on the log-mel of a real clip (encoder, a prompt, one step with the cache);
    raise ModelError if any output holds NaN or infinity. Returns the largest |logit| of each decoder."""
    import onnxruntime as ort

    from xdna_ep.audio import N_FRAMES, load_audio, log_mel_spectrogram, pad_or_trim

    ids = special_token_ids(dims.n_vocab)
    prompt = [ids["sot"]] + ([ids["sot"] + 1, ids["transcribe"]] if dims.is_multilingual else []) + [ids["no_timestamps"]]
    mel = pad_or_trim(log_mel_spectrogram(load_audio(validation_audio()), n_mels=dims.n_mels), N_FRAMES)[None]

    options = ort.SessionOptions()
    options.log_severity_level = 3  # not the load-time warning about the optional input logits_positions

    def session(file: str):
        return ort.InferenceSession(str(folder / file), options, providers=["CPUExecutionProvider"])

    states = session(registry.ENCODER_FILE).run(None, {"input_features": mel.astype(np.float32)})[0]
    decoder = session(registry.DECODER_FILE)
    first = dict(zip(
        [o.name for o in decoder.get_outputs()],
        decoder.run(None, {"input_ids": np.array([prompt], dtype=np.int64), "encoder_hidden_states": states}),
    ))
    with_past = session(registry.DECODER_WITH_PAST_FILE)
    feeds = {"input_ids": first["logits"][:, -1:].argmax(-1).astype(np.int64)}
    for name in (i.name for i in with_past.get_inputs() if i.name.startswith("past_key_values.")):
        feeds[name] = first[name.replace("past_key_values.", "present.")]
    second = with_past.run(None, feeds)
    bad = [name for name, value in [("encoder", states), *first.items(), ("decoder_with_past", second[0])]
           if not np.all(np.isfinite(value))]
    if bad:
        raise ModelError(f"the exported model computes non-finite values on {validation_audio().name}: {', '.join(bad)}")
    return {
        "audio": validation_audio().name,
        "decoder_max_abs_logit": float(np.abs(first["logits"]).max()),
        "decoder_with_past_max_abs_logit": float(np.abs(second[0]).max()),
    }


def _config_json(name: str, dims: WhisperDims, extra: dict, origin: str, exporter: str, validation: dict,
                 check: dict, seconds: float) -> dict:
    from xdna_ep.models.build import ONNX_OPSET

    versions = {}
    packages = ("onnx", "onnxruntime") + (("torch", "transformers", "optimum-onnx") if exporter == "optimum" else ())
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return {
        "name": name,
        "format": registry.FORMAT_VERSION,
        **asdict(dims),
        "is_multilingual": dims.is_multilingual,
        "special_tokens": special_token_ids(dims.n_vocab),
        **extra,
        "source": origin,
        "export": {"exporter": exporter, "opset": ONNX_OPSET, "seconds": round(seconds, 1), "versions": versions},
        "check": check,
        "validation": validation,
    }
