"""The exceptions xdna-ep raises on purpose: each names the problem in a sentence a user can act on.

The CLI prints them as ``error: <message>`` with a non-zero exit code instead of a traceback.
"""

from __future__ import annotations


class XdnaError(Exception):
    """Base class of every error xdna-ep raises on purpose."""


class AudioError(XdnaError):
    """An audio file is missing, undecodable, empty or otherwise unusable."""


class AudioTooLong(AudioError):
    """A recording is longer than the caller accepts; raised before its samples are held."""

    def __init__(self, seconds: float | None, max_seconds: float, name: str) -> None:
        """``seconds``: the recording's duration, or None when decoding stopped at the limit without learning it."""
        super().__init__(f"{name}: audio too long: {self.describe(seconds, max_seconds)}; at most {max_seconds:g} s accepted")
        self.seconds = seconds
        self.max_seconds = max_seconds

    @staticmethod
    def describe(seconds: float | None, max_seconds: float) -> str:
        return f"{seconds:.1f} s" if seconds is not None else f"more than {max_seconds:g} s"


class ModelError(XdnaError):
    """A model folder, weights file or ONNX file is missing, corrupt or not the expected Whisper export."""


class DeviceError(XdnaError):
    """The requested device is absent or failed in a way that cannot be recovered.

    ``cause``: what failed, in a word fallback counters group by (a command state such as
    ``ERT_CMD_STATE_TIMEOUT``, or the pyxrt step: ``hw_context``, ``xclbin``, ``bo.sync``, ...).
    """

    def __init__(self, message: str, cause: str | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class FallbackError(XdnaError):
    """Strict mode: a node that was placed on the NPU had to be recomputed on the CPU."""


class ComputeError(XdnaError):
    """An xdna op could be computed neither on its device nor on the CPU: the run has no valid output."""
