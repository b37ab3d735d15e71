"""xdna-ep: ONNX Runtime with Whisper's matrix work on the AMD XDNA NPU, and speech-to-text on top."""

from __future__ import annotations

__version__ = "0.1.0"
