"""OpenAI's audio API: ``POST /v1/audio/transcriptions``, ``POST /v1/audio/translations``, and the
model listing ``GET /v1/models`` and ``GET /v1/models/{id}``, so the official ``openai`` client works
unchanged with ``base_url="http://HOST:PORT/v1"``.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, Callable

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

OPENAI_MODEL_ALIAS = "whisper-1"  # the model name OpenAI clients send; served by the loaded model


_OPENAI_UNSUPPORTED = {
    "stream": "streamed answers are not offered; leave it out or send false",
    "include": "log probabilities are not returned",
    "chunking_strategy": "the audio is cut into 30-s windows as Whisper does",
    "known_speaker_names": "no diarization",
    "known_speaker_references": "no diarization",
}


def openai_request(fields: FormFields, task: str, model: WhisperModel) -> TranscriptionRequest:
    """OpenAI's ``/v1/audio/transcriptions`` (task transcribe) and ``/v1/audio/translations`` fields."""
    known = {"model", "prompt", "response_format", "temperature", "timestamp_granularities", "stream"}
    if task == "transcribe":
        known.add("language")
    fields.reject_unknown(known, _OPENAI_UNSUPPORTED)
    if fields.flag("stream", False):
        raise RequestError(400, f"field 'stream' is not supported: {_OPENAI_UNSUPPORTED['stream']}", "stream")
    served = (OPENAI_MODEL_ALIAS, model.name)
    requested_model = fields.text("model")
    if requested_model is not None and requested_model not in served:
        raise RequestError(
            400, f"model {requested_model!r} is not served here; this server serves {' or '.join(served)}", "model"
        )
    response_format = fields.choice("response_format", RESPONSE_FORMATS, "json")
    granularities = set(fields.values("timestamp_granularities"))
    unknown = sorted(granularities - {"word", "segment"})
    if unknown:
        raise RequestError(400, f"timestamp_granularities must be word or segment, not {unknown[0]!r}",
                           "timestamp_granularities")
    if granularities and response_format != "verbose_json":
        raise RequestError(400, "timestamp_granularities needs response_format=verbose_json",
                           "timestamp_granularities")
    _check_task(model, task)
    language = _check_language(model, fields.text("language"), task)
    return TranscriptionRequest(
        task=task,
        language="en" if task == "translate" else language,
        temperature=fields.number("temperature", 0.0, 0.0, 1.0),
        prompt=fields.text("prompt"),
        timestamps=response_format in ("srt", "vtt", "verbose_json"),
        response_format=response_format,
        word_timestamps="word" in granularities,
        segment_list=not granularities or "segment" in granularities,  # OpenAI's default granularity: segment
    )


def openai_response(request: TranscriptionRequest, outcome: Outcome) -> Response:
    """OpenAI's audio API answer: ``{"text", "usage"}``, verbose_json with segments, or plain text formats."""
    usage = {"type": "duration", "seconds": math.ceil(outcome.audio_seconds)}
    if request.response_format == "json":
        return JSONResponse({"text": outcome.transcription.text, "usage": usage})
    if request.response_format == "verbose_json":
        return JSONResponse({**_verbose_json(request, outcome), "usage": usage})
    return _text_response(request, outcome)



def model_object(model_id: str, created: int) -> dict[str, Any]:
    """One model as OpenAI's ``GET /v1/models`` lists it."""
    return {"id": model_id, "object": "model", "created": created, "owned_by": "xdna-ep"}


def add_routes(app: FastAPI, serve: ServeTranscription, served_model: Callable[[], WhisperModel]) -> None:
    """Register OpenAI's audio and model routes on ``app``; ``served_model()`` is the loaded model (or 503)."""
    created = int(time.time())  # OpenAI's "created": when this server started

    def served_ids() -> list[str]:
        return [OPENAI_MODEL_ALIAS, served_model().name]

    @app.post("/v1/audio/transcriptions", summary="OpenAI audio API: transcribe")
    async def openai_transcriptions(request: Request) -> Response:
        return await serve(request, lambda fields, model: openai_request(fields, "transcribe", model), openai_response)

    @app.post("/v1/audio/translations", summary="OpenAI audio API: translate to English")
    async def openai_translations(request: Request) -> Response:
        return await serve(request, lambda fields, model: openai_request(fields, "translate", model), openai_response)

    @app.get("/v1/models", summary="OpenAI models API: the models served (whisper-1 and the loaded model's name)")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_object(model_id, created) for model_id in served_ids()]}

    @app.get("/v1/models/{model_id:path}", summary="OpenAI models API: one model")
    async def retrieve_model(model_id: str) -> dict[str, Any]:
        served = served_ids()
        if model_id not in served:
            raise RequestError(404, f"model {model_id!r} is not served here; this server serves {' and '.join(served)}",
                               "model")
        return model_object(model_id, created)
