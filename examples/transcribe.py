"""Transcribe an audio file with xdna-ep's Python API: python examples/transcribe.py [FILE] [MODEL]."""

from __future__ import annotations

import sys
from pathlib import Path

import xdna_ep

audio = sys.argv[1] if len(sys.argv) > 1 else Path(xdna_ep.__file__).parent / "data" / "jfk.wav"  # the sample
model = xdna_ep.load_model(sys.argv[2] if len(sys.argv) > 2 else "tiny.en", device="cpu")  # loaded once
result = xdna_ep.transcribe(audio, model, language="en")  # any TranscribeOptions/DecodingOptions field
for segment in result.segments:
    print(f"[{segment.start:6.2f} -> {segment.end:6.2f}] {segment.text.strip()}")
print(f"{result.duration:.1f} s of audio in {result.timing['total']:.2f} s ({result.language})")
