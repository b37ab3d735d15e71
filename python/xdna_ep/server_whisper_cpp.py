"""whisper.cpp server's contract: ``POST /inference`` (multipart ``file``, ``response_format``,
``language``, ``temperature``, ``temperature_inc``, ``prompt``, ``translate``, ``no_timestamps``,
``beam_size``, ``best_of``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

# FastAPI reads the handlers' annotations (strings, with the __future__ import) in this module's namespace
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from xdna_ep.server_requests import (
    RESPONSE_FORMATS,
    FormFields,
    Outcome,
    RequestError,
    TranscriptionRequest,
    _check_language,
    _check_task,
    _text_response,
    _verbose_json,
)

if TYPE_CHECKING:
    from fastapi import FastAPI

    from xdna_ep.model import WhisperModel
    from xdna_ep.server_requests import ServeTranscription


MAX_BEAMS = 16  # beam_size and best_of: each beam is a row of the decoder's batch and of its cache
DEFAULT_WORDS = ("-1",)  # whisper.cpp's "use the default" value for beam_size and best_of

# whisper.cpp's decoding knobs this pipeline has no equivalent for
_WHISPER_CPP_UNSUPPORTED = {
    name: "whisper.cpp decoding option without an equivalent here"
    for name in (
        "offset_t", "offset_n", "duration", "max_context", "max_len", "audio_ctx",
        "word_thold", "entropy_thold", "logprob_thold", "debug_mode", "diarize", "tinydiarize", "split_on_word",
        "detect_language", "suppress_non_speech", "suppress_nst",
    )
}


def whisper_cpp_request(fields: FormFields, model: WhisperModel) -> TranscriptionRequest:
    """whisper.cpp server's ``/inference`` fields."""
    known = {
        "response_format", "language", "temperature", "temperature_inc", "prompt", "translate", "no_timestamps",
        "beam_size", "best_of",
    }
    fields.reject_unknown(known, _WHISPER_CPP_UNSUPPORTED)
    response_format = fields.choice("response_format", RESPONSE_FORMATS, "json")
    task = "translate" if fields.flag("translate", False) else "transcribe"
    _check_task(model, task)
    language = _check_language(model, fields.text("language"), task)
    no_timestamps = fields.flag("no_timestamps", False)
    if no_timestamps and response_format in ("srt", "vtt"):
        raise RequestError(400, f"response_format {response_format} needs timestamps; drop no_timestamps",
                           "no_timestamps")
    return TranscriptionRequest(
        task=task,
        language=language,
        temperature=fields.number("temperature", 0.0, 0.0, 1.0),
        temperature_increment=fields.number("temperature_inc", 0.2, 0.0, 1.0),
        prompt=fields.text("prompt"),
        timestamps=not no_timestamps,
        response_format=response_format,
        # whisper.cpp: beam_size > 1 searches that many beams, 1 decodes greedily, -1 or absent is the server's
        # default (whisper.cpp's own: greedy, best_of 2; this server's: the pipeline's, beam 5 and best_of 5)
        beam_size=fields.integer("beam_size", 1, MAX_BEAMS, DEFAULT_WORDS),
        best_of=fields.integer("best_of", 1, MAX_BEAMS, DEFAULT_WORDS),
    )


def whisper_cpp_response(request: TranscriptionRequest, outcome: Outcome) -> Response:
    """whisper.cpp server's answer: ``{"text"}``, verbose_json with segments, or plain text formats."""
    if request.response_format == "json":
        return JSONResponse({"text": outcome.transcription.text})
    if request.response_format == "verbose_json":
        return JSONResponse(_verbose_json(request, outcome))
    return _text_response(request, outcome)



def add_routes(app: FastAPI, serve: ServeTranscription) -> None:
    """Register whisper.cpp server's ``/inference`` on ``app``."""

    @app.post("/inference", summary="whisper.cpp server contract")
    async def whisper_cpp_inference(request: Request) -> Response:
        return await serve(request, whisper_cpp_request, whisper_cpp_response)
