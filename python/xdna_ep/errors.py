"""The exceptions xdna-ep raises on purpose: each names the problem in a sentence a user can act on.

The CLI prints them as ``error: <message>`` with a non-zero exit code instead of a traceback.
"""

from __future__ import annotations


class XdnaError(Exception):
    """Base class of every error xdna-ep raises on purpose."""


class AudioError(XdnaError):
    """An audio file is missing, undecodable, empty or otherwise unusable."""


class ModelError(XdnaError):
    """A model folder, weights file or ONNX file is missing, corrupt or not the expected Whisper export."""


class DeviceError(XdnaError):
    """The requested device is absent or failed in a way that cannot be recovered."""


class FallbackError(XdnaError):
    """Strict mode: a node that was placed on the NPU had to be recomputed on the CPU."""
