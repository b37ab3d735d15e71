"""NumPy's BLAS threads during a transcription: one, so that they never compete with ONNX Runtime's.

NumPy's OpenBLAS (the one its wheels ship) starts a thread per core for a matrix product and keeps
those threads spinning for a while after it returns. A transcription computes each window's log-mel
(a (n_mels, 201) @ (201, frames) product) just before the encoder runs, so the spinning threads took a
core from ONNX Runtime's encoder: tiny.en's encoder took 134 ms per 30-s window inside ``transcribe``
against 98 ms run alone (quiet 2-core machine; ``python examples/time_split.py``). With one BLAS
thread the log-mel takes the same time (its product is small) and the encoder its 98 ms.

``single_threaded_blas`` limits BLAS to one thread for the duration of the call it decorates and
restores the caller's setting afterwards (threadpoolctl, which sets OpenBLAS, MKL or BLIS alike), so
a program that imports xdna_ep keeps its own BLAS threads outside our calls.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

Function = TypeVar("Function", bound=Callable)

_controller = None


def _blas_controller():
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()  # finds the BLAS libraries loaded (about 1 ms, once)
    return _controller


def single_threaded_blas(function: Function) -> Function:
    """Decorate ``function`` so that BLAS runs on one thread while it runs (about 7 us per call)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with _blas_controller().limit(limits=1, user_api="blas"):
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
