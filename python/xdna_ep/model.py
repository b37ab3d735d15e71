"""The Whisper model context: three ONNX Runtime sessions, the tokenizer and the dimensions, loaded once.

Per-utterance state lives outside it: ``DecoderState`` holds the KV cache of one decoding pass, so one
``WhisperModel`` can serve any number of transcriptions. The step API mirrors whisper.cpp's:

    mel = log_mel(samples)                       # (n_mels, n_frames), cut/padded to (n_mels, 3000)
    audio_features = model.encode(mel)           # (1, n_audio_ctx, n_audio_state)
    state = model.new_decoder_state(audio_features)
    logits = model.decode_step(state, prompt)    # decoder_model: (1, len(prompt), n_vocab)
    logits = model.decode_step(state, [[next]])  # decoder_with_past_model: (1, 1, n_vocab)

The first step runs ``decoder_model`` (prompt + encoder states -> logits, self-attention KV,
cross-attention KV); every later step runs ``decoder_with_past_model``, feeding the previous step's
``present.*`` back as ``past_key_values.*`` (the graph concatenates past and new). The
cross-attention KV of the first step is reused for the whole window.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from xdna_ep.audio import N_FRAMES
from xdna_ep.audio import log_mel_spectrogram as log_mel
from xdna_ep.errors import ModelError
from xdna_ep.tokenizer import Tokenizer

__all__ = ["DEVICES", "DecoderState", "ModelDims", "WhisperModel", "create_session", "log_mel"]

# the names xdna_ep.ep.session.DEVICES checks, spelled here so the CLI lists them without importing onnxruntime
DEVICES = ("cpu", "sim", "npu", "auto")

_PAST_PREFIX = "past_key_values."
_PRESENT_PREFIX = "present."
_LOGITS_POSITIONS = "logits_positions"  # models.build.LOGITS_POSITIONS (an optional input of decoder_model)


@dataclass(frozen=True)
class ModelDims:
    """Whisper's dimensions, named as openai-whisper names them (from ``whisper_config.json``)."""

    n_mels: int  # mel bands of the input
    n_audio_ctx: int  # encoder positions (1500 for 30 s)
    n_audio_state: int  # encoder width
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int  # 51864 English-only, 51865 multilingual (timestamp tokens included)
    n_text_ctx: int  # decoder positions (448)
    n_text_state: int  # decoder width
    n_text_head: int
    n_text_layer: int

    @property
    def is_multilingual(self) -> bool:
        return self.n_vocab >= 51865

    @classmethod
    def from_config(cls, config: dict[str, Any], source: Path) -> ModelDims:
        missing = [field.name for field in fields(cls) if field.name not in config]
        if missing:
            raise ModelError(f"{source} lacks the model dimensions {', '.join(missing)}")
        return cls(**{field.name: int(config[field.name]) for field in fields(cls)})


def create_session(
    path: str | os.PathLike,
    device: str = "cpu",
    profile: str | None = None,
    precision: str | None = None,
    strict: bool = False,
    map_weights: bool = False,
    threads: int = 0,
) -> Any:
    """The one place the pipeline creates an ONNX Runtime session.

    ``cpu``: a plain ``onnxruntime.InferenceSession`` on the CPU execution provider: the stock graph, its
    attention chains as ONNX ``Attention`` where ``graph_passes.onnx_attention`` rewrites them (``_cpu_graph``).
    With ``map_weights`` (the decoders), prepacking is off, so the session computes on the
    external-data file as ONNX Runtime maps it: sessions over one file (both decoders) then share one
    copy of the weights in memory, where prepacking would give each session its own packed copy.
    ``sim`` / ``npu`` / ``auto``: ``xdna_ep.InferenceSession``, which rewrites the graph and runs the
    heavy ops on the (simulated) NPU; ``profile``, ``precision`` and ``strict`` are passed to it.
    ``threads``: ONNX Runtime's intra-op threads (0: its default, one per physical core).
    """
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0: one per core), got {threads}")
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    # idle intra-op threads sleep instead of spinning: a transcription alternates three sessions (and
    # NumPy), and each session's spinning workers took the cores from the one running. tiny.en on the CPU,
    # quiet 2-core machine (`python examples/time_split.py`, README "Measured"): jfk.wav 292 -> 212 ms,
    # a 62-s recording 816 -> 576 ms; spinning kept in the encoder only, or one shared pool, was slower
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # decoder_model's optional input logits_positions is an initializer that is also a graph input;
    # ONNX Runtime warns about every such input at load (to stderr, float32 and int8 alike), as a
    # possible missed constant: only errors are logged
    options.log_severity_level = 3
    if device == "cpu":
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

        load_errors = (ort_errors.Fail, ort_errors.InvalidGraph, ort_errors.InvalidProtobuf, ort_errors.NoSuchFile)
        if map_weights:
            options.add_session_config_entry("session.disable_prepacking", "1")
        try:
            graph = str(path) if map_weights else _cpu_graph(Path(path))
            return onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        except load_errors as error:
            raise ModelError(f"ONNX Runtime cannot load {path}: {error}") from None
    from xdna_ep import InferenceSession

    settings = {"profile": profile, "precision": precision}
    return InferenceSession(
        str(path), device=device, strict=strict, sess_options=options,
        **{key: value for key, value in settings.items() if value is not None},
    )  # fmt: skip


def _cpu_graph(path: Path) -> str | bytes:
    """What the CPU session loads for the graph at ``path``: the file itself, or, when it holds attention
    chains that ``graph_passes.onnx_attention`` rewrites (the encoder's self-attention), the rewritten
    graph with its weights, serialized (encoder, float32 and int8 alike; README "Measured").

    A file ONNX cannot parse is passed on as it is, for ONNX Runtime to refuse with its own message.
    """
    import onnx
    from google.protobuf.message import DecodeError
    from onnx.external_data_helper import load_external_data_for_model

    from xdna_ep.graph_passes.onnx_attention import onnx_attention

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (OSError, DecodeError, ValueError):
        return str(path)
    model, rewritten = onnx_attention(model)
    if not rewritten:
        return str(path)
    try:
        load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError, onnx.checker.ValidationError):  # a missing or short weights file
        return str(path)
    return model.SerializeToString()


@dataclass
class DecoderState:
    """The KV cache of one decoding pass over one 30-s window (per-call state, not part of the model).

    ``audio_features``: (batch, n_audio_ctx, n_audio_state), the encoder output the pass attends to.
    ``past``: ``past_key_values.{i}.decoder|encoder.key|value`` -> (batch, n_text_head, n, head_dim);
    empty before the first step. The decoder entries grow by one position per token; the encoder
    (cross-attention) entries are computed by the first step and reused unchanged.
    ``n_tokens``: tokens fed to the decoder so far (the decoder entries' length n).
    """

    audio_features: np.ndarray
    past: dict[str, np.ndarray]
    n_tokens: int = 0

    def repeat(self, n: int) -> None:
        """Repeat a batch-1 state ``n`` times along the batch axis (candidates sharing one prompt)."""
        if n == 1:
            return
        if self.audio_features.shape[0] != 1:
            raise ValueError(f"only a batch-1 state can be repeated, this one has {self.audio_features.shape[0]}")
        self.audio_features = np.repeat(self.audio_features, n, axis=0)
        self.past = {name: np.repeat(value, n, axis=0) for name, value in self.past.items()}

    def reorder(self, indices: np.ndarray) -> None:
        """Make row ``b`` of the batch the former row ``indices[b]`` (beams following their sources).

        Only the self-attention entries (``*.decoder.*``, one row per beam) are gathered; the
        cross-attention entries and ``audio_features`` are the same in every row of a beam search
        (one audio), so they keep their rows uncopied; an identity ``indices`` copies nothing.
        """
        indices = np.asarray(indices, dtype=np.int64)
        if indices.ndim != 1 or indices.size != self.audio_features.shape[0]:
            raise ValueError(
                f"reorder needs one index per batch row ({self.audio_features.shape[0]}), got shape {indices.shape}"
            )
        if np.array_equal(indices, np.arange(indices.size)):
            return
        for name, value in self.past.items():
            if ".decoder." in name:
                self.past[name] = value[indices]


def _overridable_inputs(session: Any) -> set[str]:
    """Inputs of ``session`` that have a default (ONNX initializers that are also graph inputs)."""
    getter = getattr(session, "get_overridable_initializers", None)
    return {node.name for node in getter()} if getter else set()


class WhisperModel:
    """A loaded Whisper model: encoder and decoder sessions, tokenizer, dimensions, device.

    ``name_or_path``: a model name the registry knows (``tiny.en``, ``base``; exported on first use)
    or the path of an exported model folder.
    ``compute_type``: ``float32`` (the exported graphs) or ``int8`` (their MatMul weights quantized to
    8 bits, cached in ``<folder>/int8/``; CPU device only, see ``xdna_ep.models.quantize``).
    ``threads``: ONNX Runtime's intra-op threads per session (0: one per physical core).
    """

    def __init__(
        self,
        name_or_path: str | os.PathLike = "tiny.en",
        device: str = "cpu",
        profile: str | None = None,
        precision: str | None = None,
        strict: bool = False,
        compute_type: str = "float32",
        threads: int = 0,
    ) -> None:
        from xdna_ep.models import registry
        from xdna_ep.models.quantize import check_compute_type, int8_folder

        if device not in DEVICES:
            raise ValueError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
        check_compute_type(compute_type, device)
        self.folder = Path(registry.ensure_model(name_or_path))
        self.compute_type = compute_type
        graphs = int8_folder(self.folder) if compute_type == "int8" else self.folder
        config = registry.read_config(self.folder)
        self.name = str(config.get("name", self.folder.name))
        self.dims = ModelDims.from_config(config, self.folder / registry.CONFIG_FILE)
        self.tokenizer = Tokenizer(self.folder / registry.TOKENIZER_FILE, self.dims.is_multilingual)
        self.device = device
        self.profile = profile
        self.precision = precision

        def session(file_name: str, map_weights: bool = False) -> Any:
            # int8's MatMulNBits needs its prepacked weights: mapped unpacked, tiny.en on jfk.wav took
            # 6000 ms against 1237 ms prepacked (and 1615 ms float32), so its decoders are not mapped
            map_weights = map_weights and compute_type == "float32"
            return create_session(graphs / file_name, device, profile, precision, strict, map_weights, threads)

        self.encoder = session(registry.ENCODER_FILE)
        # both decoders over one mapped decoder_weights.bin: one copy of the decoder weights in memory
        # (tiny.en: 325 vs 477 MiB peak for 300 steps, cpu time 0.94x; base: 520 vs 723 MiB, 0.91x)
        self.decoder = session(registry.DECODER_FILE, map_weights=True)
        self.decoder_with_past = session(registry.DECODER_WITH_PAST_FILE, map_weights=True)
        self.device = getattr(self.encoder, "device", device)  # "auto" resolved by the NPU session
        self._check_io()

    def _check_io(self) -> None:
        """Check the sessions have the optimum Whisper inputs and outputs this class feeds and reads."""
        expected = {
            "encoder": (self.encoder, {"input_features"}, {"last_hidden_state"}),
            "decoder_model": (self.decoder, {"input_ids", "encoder_hidden_states"}, {"logits"}),
            "decoder_with_past_model": (self.decoder_with_past, {"input_ids"}, {"logits"}),
        }
        for label, (session, inputs, outputs) in expected.items():
            have_inputs = {node.name for node in session.get_inputs()}
            have_outputs = {node.name for node in session.get_outputs()}
            if not inputs <= have_inputs or not outputs <= have_outputs:
                raise ModelError(
                    f"{self.folder}: {label} has inputs {sorted(have_inputs)} and outputs "
                    f"{sorted(have_outputs)}; expected at least {sorted(inputs)} -> {sorted(outputs)}"
                )
        self._past_names = [
            node.name for node in self.decoder_with_past.get_inputs() if node.name.startswith(_PAST_PREFIX)
        ]
        first_outputs = {node.name for node in self.decoder.get_outputs()}
        missing = [
            name for name in self._past_names if _PRESENT_PREFIX + name[len(_PAST_PREFIX):] not in first_outputs
        ]
        if len(self._past_names) != 4 * self.dims.n_text_layer or missing:
            raise ModelError(
                f"{self.folder}: decoder_with_past_model takes {len(self._past_names)} past_key_values inputs "
                f"(expected {4 * self.dims.n_text_layer}); decoder_model lacks {missing}"
            )
        # models/build.py's decoder_model computes logits only at the positions fed as logits_positions
        self._reads_positions = _LOGITS_POSITIONS in _overridable_inputs(self.decoder)
        # decoder_with_past_model returns only the self-attention KV: the cross-attention KV stays as it is
        self._with_past_presents = [
            node.name for node in self.decoder_with_past.get_outputs() if node.name.startswith(_PRESENT_PREFIX)
        ]

    @property
    def is_multilingual(self) -> bool:
        return self.dims.is_multilingual

    def __repr__(self) -> str:
        return (
            f"WhisperModel({self.name!r}, device={self.device!r}, compute_type={self.compute_type!r}, "
            f"folder={str(self.folder)!r})"
        )

    def encode(self, mel: np.ndarray) -> np.ndarray:
        """Encoder: log-mel (n_mels, N_FRAMES) or (batch, n_mels, N_FRAMES) -> (batch, n_audio_ctx, n_audio_state)."""
        if mel.ndim == 2:
            mel = mel[None]
        if mel.shape[1:] != (self.dims.n_mels, N_FRAMES):
            raise ValueError(f"encoder input must be (batch, {self.dims.n_mels}, {N_FRAMES}), got {mel.shape}")
        features = np.ascontiguousarray(mel, dtype=np.float32)
        return self.encoder.run(["last_hidden_state"], {"input_features": features})[0]

    def new_decoder_state(self, audio_features: np.ndarray) -> DecoderState:
        """An empty KV cache attending to ``audio_features`` (batch, n_audio_ctx, n_audio_state)."""
        return DecoderState(audio_features=audio_features, past={})

    def decode_step(
        self, state: DecoderState, tokens: np.ndarray, positions: Sequence[int] | None = None
    ) -> np.ndarray:
        """Run the decoder on ``tokens`` (batch, n_new) int64 and extend ``state``'s KV cache in place.

        The first call (empty cache) runs ``decoder_model`` on the whole prompt and also computes the
        cross-attention KV; later calls run ``decoder_with_past_model`` on the new tokens only.
        Returns logits (batch, n_new, n_vocab) float32, or (batch, len(positions), n_vocab) for the
        positions among the new tokens given (negative ones count from the end). A graph that takes
        ``logits_positions`` (models/build.py's) computes only those: for a prompt of n tokens, one
        (n_read x d) @ (d x n_vocab) product instead of (n x d) @ (d x n_vocab).
        """
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        if tokens.ndim != 2:
            raise ValueError(f"decoder tokens must be (batch, n_new), got shape {tokens.shape}")
        if state.n_tokens + tokens.shape[1] > self.dims.n_text_ctx:
            raise ValueError(
                f"decoder context is {self.dims.n_text_ctx} tokens; {state.n_tokens} + {tokens.shape[1]} exceed it"
            )
        read = None
        if positions is not None:
            read = np.array(positions, dtype=np.int64).reshape(-1)
            n_new = tokens.shape[1]
            if read.size == 0 or np.any(read < -n_new) or np.any(read >= n_new):
                raise ValueError(f"logit positions must be in [-{n_new}, {n_new}) for {n_new} new tokens, got {list(positions)}")
        if not state.past:
            output_names = ["logits"] + [_PRESENT_PREFIX + name[len(_PAST_PREFIX):] for name in self._past_names]
            feeds = {"input_ids": tokens, "encoder_hidden_states": state.audio_features}
            if read is not None and self._reads_positions:
                feeds[_LOGITS_POSITIONS] = read
                read = None  # the graph computed only those
            logits, *presents = self.decoder.run(output_names, feeds)
            state.past = dict(zip(self._past_names, presents))
        else:
            feeds = {"input_ids": tokens, **state.past}
            logits, *presents = self.decoder_with_past.run(["logits", *self._with_past_presents], feeds)
            for output_name, present in zip(self._with_past_presents, presents):
                state.past[_PAST_PREFIX + output_name[len(_PRESENT_PREFIX):]] = present
        state.n_tokens += tokens.shape[1]
        return logits if read is None else logits[:, read]
