"""xdna-ep: ONNX Runtime with Whisper's matrix work on the AMD XDNA NPU, and speech-to-text on top."""

from __future__ import annotations

__version__ = "0.1.0"

import os
from typing import TYPE_CHECKING, Any

# The submodule is imported before the function of the same name is defined: importing a submodule
# sets it as an attribute of the package, which would otherwise replace the function on first use.
from xdna_ep import transcribe as _transcribe_module  # noqa: F401  (light: numpy and dataclasses)

if TYPE_CHECKING:
    import numpy as np
    import onnx
    import onnxruntime

    from xdna_ep.model import WhisperModel
    from xdna_ep.transcribe import Transcription


def load_model(
    name_or_path: str | os.PathLike = "tiny.en",
    device: str = "cpu",
    profile: str | None = None,
    precision: str | None = None,
    strict: bool = False,
    compute_type: str = "float32",
    threads: int = 0,
) -> WhisperModel:
    """Load a Whisper model (a name such as ``tiny.en`` / ``base``, or an exported model folder) once,
    for any number of transcriptions. ``device``: ``cpu``, ``sim``, ``npu`` or ``auto``.
    ``compute_type``: ``float32``, or ``int8`` (MatMul weights in 8 bits; device ``cpu`` only).
    ``threads``: ONNX Runtime intra-op threads per session (0: one per physical core)."""
    from xdna_ep.model import WhisperModel

    return WhisperModel(
        name_or_path, device=device, profile=profile, precision=precision, strict=strict,
        compute_type=compute_type, threads=threads,
    )


def transcribe(
    audio: str | os.PathLike | np.ndarray,
    model: str | os.PathLike | WhisperModel = "tiny.en",
    device: str | None = None,
    **options: Any,
) -> Transcription:
    """Transcribe an audio file (or 16 kHz mono float32 samples) in one call.

    ``model``: a name, an exported model folder, or a model from ``load_model`` (reused as is; then
    ``device`` must be None or the model's). ``device`` defaults to ``cpu``. ``options``: fields of
    ``TranscribeOptions`` and ``DecodingOptions``, e.g. ``language="en"``, ``temperature=0``,
    ``beam_size=1`` (greedy; the default is a beam search of 5), ``word_timestamps=True`` (each
    segment's ``words``), ``without_timestamps=True``, ``initial_prompt="..."``.
    """
    from xdna_ep.model import WhisperModel
    from xdna_ep.transcribe import TranscribeOptions
    from xdna_ep.transcribe import transcribe as transcribe_recording

    transcribe_options = TranscribeOptions.from_kwargs(**options)
    if isinstance(model, WhisperModel):
        if device is not None and device != model.device:
            raise ValueError(f"the model was loaded for device {model.device!r}, not {device!r}")
    else:
        model = load_model(model, device=device or "cpu")
    return transcribe_recording(model, audio, transcribe_options)


def compile(  # noqa: A001 - the public name of the graph compiler
    model: str | os.PathLike | onnx.ModelProto,
    profile: str | None = None,
    placement: str = "auto",
    precision: str = "bf16",
    device: str | None = None,
    dims: dict[str, int] | None = None,
) -> onnx.ModelProto:
    """Fuse and partition a Whisper ONNX model for the NPU; weights of NPU nodes are bound in this
    process (``release`` frees them). ``placement``: ``auto`` (cost model), ``npu``, ``cpu`` or per kind
    (``npu,softmax=cpu``). ``device`` (``cpu``, ``sim``, ``npu``, ``auto``; None: ``auto``, warned) is
    where this model's xdna ops run, whatever session options it is opened with. ``dims`` (symbolic
    dimension name -> size) sets the sizes placement plans for; by default they come from the graph's
    structure, and ``inspect`` prints which were used."""
    from xdna_ep.ep.session import compile as compile_model

    return compile_model(model, profile=profile, placement=placement, precision=precision, device=device, dims=dims)


def session_options(device: str | None = None) -> onnxruntime.SessionOptions:
    """``onnxruntime.SessionOptions`` with the xdna custom ops registered. The ops run on the device
    their model was compiled for; ``device``, when given, is checked (``npu`` needs an NPU here)."""
    from xdna_ep.ep.session import session_options as make_session_options

    return make_session_options(device)


def save(model: onnx.ModelProto, path: str | os.PathLike):
    """Save a model ``compile`` returned (weights as external data in ``<path>.data``); another process
    opens it with ``InferenceSession(path, device=...)`` without compiling again."""
    from xdna_ep.ep.session import save as save_model

    return save_model(model, path)


def release(model: onnx.ModelProto | str) -> None:
    """Free the weights ``compile`` registered for ``model`` (its sessions must be gone)."""
    from xdna_ep.ep.session import release as release_model

    release_model(model)


def __getattr__(name: str) -> Any:
    # InferenceSession subclasses onnxruntime's: imported on first use, not with the package.
    if name == "InferenceSession":
        from xdna_ep.ep.session import InferenceSession

        return InferenceSession
    raise AttributeError(f"module 'xdna_ep' has no attribute {name!r}")
