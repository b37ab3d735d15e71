"""Shared test fixtures: project paths, the shared speech clips, loaded Whisper models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent  # the project root
AUDIO_DIR = ROOT.parent / "shared" / "audio"  # shared speech clips (never copied into the project)


@pytest.fixture(scope="session")
def goldens() -> dict:
    """``goldens.json``: clip -> model -> {text, tokens} from faster-whisper fp32 greedy on the same weights."""
    return json.loads((AUDIO_DIR / "goldens.json").read_text())


@pytest.fixture(scope="session")
def references() -> dict:
    """``references.json``: clip -> {text, source, license}."""
    return json.loads((AUDIO_DIR / "references.json").read_text())


@pytest.fixture(scope="session")
def tiny_en_model():
    """tiny.en (English-only) on the CPU, loaded once per test session."""
    from xdna_ep.model import WhisperModel

    return WhisperModel("tiny.en", device="cpu")


@pytest.fixture(scope="session")
def base_model():
    """base (multilingual) on the CPU, loaded once per test session."""
    from xdna_ep.model import WhisperModel

    return WhisperModel("base", device="cpu")


@pytest.fixture(scope="session")
def six_hours_of_silence(tmp_path_factory) -> Path:
    """Issue 15's upload: six hours of 8-kHz silence as 16-bit FLAC (546 KB), written 10 minutes at a time."""
    import numpy as np
    import soundfile

    path = tmp_path_factory.mktemp("silence") / "six_hours.flac"
    with soundfile.SoundFile(path, "w", 8000, 1, subtype="PCM_16", format="FLAC") as sound_file:
        ten_minutes = np.zeros(8000 * 600, np.int16)
        for _ in range(36):
            sound_file.write(ten_minutes)
    return path


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_models():
    """Forget the models a test module compiled, once its own fixtures are gone.

    ``xdna_ep.compile`` binds a model's weights and executor in the process until released (an
    ``xdna_ep.InferenceSession`` releases its own; a plain ONNX Runtime session over a compiled model
    cannot). Kept, they added up to most of the suite's 15-GB peak.
    """
    from real_sessions import release_memory

    from xdna_ep.ep import registry

    before = set(registry.registered())
    yield
    for key in set(registry.registered()) - before:
        registry.release(key)
    release_memory()
