"""The engines xdna-ep is measured against, on the same weights: faster-whisper (CTranslate2).

Used by benchmarks and agreement tests only; the pipeline never imports it. faster-whisper reads the
packaged CTranslate2 folder directly; for base, whose ``model.bin`` ships in two packages, the joined
file is written once into ``$XDNA_EP_HOME/ct2/<name>``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from xdna_ep.errors import ModelError
from xdna_ep.models import registry

_AUX_FILES = ("config.json", "tokenizer.json", "vocabulary.txt", "vocabulary.json", "preprocessor_config.json")


def ct2_folder(name: str) -> Path:
    """A CTranslate2 model folder faster-whisper can load for packaged model ``name``."""
    if name not in registry.PACKAGED:
        raise ModelError(f"no packaged CTranslate2 weights for '{name}' (known: {', '.join(registry.PACKAGED)})")
    packaged = registry.PACKAGED[name]
    parts = packaged.weight_files()
    if len(parts) == 1 and parts[0].name == "model.bin":
        return parts[0].parent
    folder = registry.home() / "ct2" / name
    if not (folder / "model.bin").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / "model.bin.partial"
        with open(partial, "wb") as joined:
            for part in parts:
                with open(part, "rb") as source:
                    shutil.copyfileobj(source, joined)
        partial.rename(folder / "model.bin")
    for file in _AUX_FILES:
        source = packaged.aux_folder() / file
        if source.is_file() and not (folder / file).exists():
            shutil.copyfile(source, folder / file)
    return folder


def faster_whisper_model(name: str, compute_type: str = "float32", cpu_threads: int = 0):
    """A ``faster_whisper.WhisperModel`` on the same weights xdna-ep exports (requires the bench extra)."""
    try:
        from faster_whisper import WhisperModel
    except ImportError:
        raise ModelError("faster-whisper is not installed: pip install 'xdna-ep[bench]'") from None
    return WhisperModel(str(ct2_folder(name)), device="cpu", compute_type=compute_type, cpu_threads=cpu_threads)


def faster_whisper_tokens(model, audio: np.ndarray, language: str | None = "en") -> tuple[str, list[int]]:
    """Greedy, temperature 0, no timestamps, no conditioning: the settings of ``goldens.json``."""
    segments, _ = model.transcribe(
        audio,
        beam_size=1,
        temperature=0.0,
        without_timestamps=True,
        condition_on_previous_text=False,
        language=language,
        vad_filter=False,
    )
    segments = list(segments)
    return "".join(s.text for s in segments).strip(), [t for s in segments for t in s.tokens]
