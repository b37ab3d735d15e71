"""NumPy's BLAS threads during a transcription: one, so that they never compete with ONNX Runtime's.

NumPy's OpenBLAS (the one its wheels ship) starts a thread per core for a matrix product and keeps
those threads spinning for a while after it returns. A transcription computes each window's log-mel
(a (n_mels, 201) @ (201, frames) product) just before the encoder runs, so the spinning threads took a
core from ONNX Runtime's encoder: tiny.en's encoder took 134 ms per 30-s window inside ``transcribe``
against 98 ms run alone (quiet 2-core machine; ``python examples/time_split.py``). With one BLAS
thread the log-mel takes the same time (its product is small) and the encoder its 98 ms.

``blas_threads_for`` limits BLAS to one thread for the duration of a transcription and restores
the caller's setting afterwards (threadpoolctl, which sets OpenBLAS, MKL or BLIS alike), so
a program that imports xdna_ep keeps its own BLAS threads outside our calls.
"""

from __future__ import annotations

import contextlib

_controller = None


def _blas_controller():
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()  # finds the BLAS libraries loaded (about 1 ms, once)
    return _controller


def blas_threads_for(device: str) -> contextlib.AbstractContextManager:
    """A context in which BLAS runs on one thread, for a transcription on ``device`` (about 7 us).

    ``sim`` is left alone: the simulated NPU's work is NumPy's own matrix products on the host, which
    the BLAS threads speed up; nothing of ONNX Runtime's runs while they do.
    """
    if device == "sim":
        return contextlib.nullcontext()
    return _blas_controller().limit(limits=1, user_api="blas")
