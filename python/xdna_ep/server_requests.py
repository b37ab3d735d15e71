"""What every transcription contract of the server shares: refusals in OpenAI's error shape, the checked
form fields, the request they describe (``TranscriptionRequest``), and the pieces of the answers.

The contracts themselves (``server_openai``, ``server_whisper_cpp``, ``/transcribe`` in ``server``) turn
form fields into a ``TranscriptionRequest`` and an ``Outcome`` into their own answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Collection

from starlette.requests import Request
from starlette.responses import Response

from xdna_ep.languages import normalize_language

if TYPE_CHECKING:
    from xdna_ep.model import WhisperModel
    from xdna_ep.transcribe import Segment, TranscribeOptions, Transcription

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
TEXT_CONTENT_TYPES = {
    "text": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
}
TRUE_WORDS = ("true", "1", "yes", "y", "on")
FALSE_WORDS = ("false", "0", "no", "n", "off")


class RequestError(Exception):
    """A request the server refuses: HTTP status, a message naming the problem, the field at fault.

    Answered in OpenAI's error shape, ``{"error": {"message", "type", "param", "code"}}``, which also
    satisfies whisper.cpp clients (they look for an ``error`` key).
    """

    def __init__(self, status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = headers or {}


class ClientGone(Exception):
    """The client closed its connection before its transcription was answered."""


_ERROR_TYPES = {401: "authentication_error", 404: "not_found_error", 503: "server_busy_error"}


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    error_type = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": error_type, "param": param, "code": status}}



class FormFields:
    """The text fields of one form, read by name with the check each contract needs (400 naming the field).

    A list field may arrive as ``name[]`` (OpenAI's client) or repeated ``name``; both are read.
    """

    def __init__(self, fields: dict[str, list[str]]) -> None:
        self.fields = fields

    def reject_unknown(self, known: Collection[str], unsupported: dict[str, str] | None = None) -> None:
        for name in self.fields:
            base = name[:-2] if name.endswith("[]") else name
            if unsupported and base in unsupported:
                raise RequestError(400, f"field {base!r} is not supported by this server: {unsupported[base]}", base)
            if base not in known:
                raise RequestError(
                    400, f"unknown field {name!r}; this endpoint takes file, {', '.join(sorted(known))}", name
                )

    def values(self, name: str) -> list[str]:
        return [value.strip() for key in (name, f"{name}[]") for value in self.fields.get(key, [])]

    def text(self, name: str) -> str | None:
        values = self.values(name)
        if len(values) > 1:
            raise RequestError(400, f"field {name!r} given {len(values)} times; give it once", name)
        return values[0] if values and values[0] != "" else None

    def choice(self, name: str, choices: Collection[str], default: str) -> str:
        value = self.text(name)
        if value is None:
            return default
        if value not in choices:
            raise RequestError(400, f"{name} must be one of {', '.join(choices)}, not {value!r}", name)
        return value

    def number(self, name: str, default: float, low: float, high: float) -> float:
        value = self.text(name)
        return default if value is None else _in_range(name, value, float, "a number", low, high)

    def integer(self, name: str, low: int, high: int, default_words: Collection[str] = ()) -> int | None:
        """An integer in [low, high]; None when absent or one of ``default_words`` (the contract's default)."""
        value = self.text(name)
        if value is None or value in default_words:
            return None
        return _in_range(name, value, int, "an integer", low, high)

    def flag(self, name: str, default: bool) -> bool:
        value = self.text(name)
        if value is None:
            return default
        if value.lower() in TRUE_WORDS:
            return True
        if value.lower() in FALSE_WORDS:
            return False
        raise RequestError(400, f"{name} must be true or false, not {value!r}", name)


def _in_range(name: str, value: str, convert: Callable[[str], Any], kind: str, low: float, high: float) -> Any:
    """``convert(value)`` within [low, high], else a 400 naming the field."""
    try:
        number = convert(value)
    except ValueError:
        raise RequestError(400, f"{name} must be {kind}, not {value!r}", name) from None
    if not low <= number <= high:
        raise RequestError(400, f"{name} must be between {low:g} and {high:g}, not {value}", name)
    return number


@dataclass(frozen=True)
class TranscriptionRequest:
    """What one request asks for, once its fields are checked; independent of the contract it came in."""

    task: str = "transcribe"  # transcribe or translate (to English)
    language: str | None = None  # language code; None detects it (multilingual) or means English
    temperature: float = 0.0  # first decoding temperature
    temperature_increment: float = 0.2  # added on each fallback; 0 disables the fallback
    prompt: str | None = None  # text of the preceding speech, conditions the first window
    timestamps: bool = True  # segments with start/end times (False: text only)
    response_format: str = "json"
    word_timestamps: bool = False  # time every word (cross-attention alignment)
    segment_list: bool = True  # verbose_json lists the segments (OpenAI: unless only word granularity is asked)
    beam_size: int | None = None  # beams at temperature 0 (1: greedy); None: the pipeline's default
    best_of: int | None = None  # samples at a temperature above 0; None: the pipeline's default


def _temperatures(request: TranscriptionRequest) -> tuple[float, ...]:
    """openai-whisper's fallback schedule: from the first temperature up to 1.0 by the increment."""
    if request.temperature_increment <= 0:
        return (request.temperature,)
    steps = int(math.floor((1.0 - request.temperature) / request.temperature_increment + 1e-6))
    return tuple(round(request.temperature + i * request.temperature_increment, 6) for i in range(steps + 1))



@dataclass(frozen=True)
class Outcome:
    """One finished transcription and what it cost."""

    transcription: Transcription
    audio_seconds: float
    decode_seconds: float  # upload -> samples
    queue_seconds: float  # waiting for the device
    transcribe_seconds: float  # on the device thread
    device: dict[str, Any]  # what this transcription did on the device (run_transcription)


def transcribe_options(request: TranscriptionRequest) -> TranscribeOptions:
    """The pipeline's options for a checked request (ValueError names a bad combination)."""
    from xdna_ep.transcribe import TranscribeOptions

    chosen = {name: value for name, value in (("beam_size", request.beam_size), ("best_of", request.best_of))
              if value is not None}
    return TranscribeOptions.from_kwargs(
        task=request.task,
        language=request.language,
        temperature=_temperatures(request),
        initial_prompt=request.prompt,
        without_timestamps=not request.timestamps,
        word_timestamps=request.word_timestamps,
        **chosen,
    )



def _options_json(request: TranscriptionRequest) -> dict[str, Any]:
    """The decoding a request got, defaults filled in: what ``/transcribe`` reports it used."""
    options = transcribe_options(request)
    decoding = options.decoding
    return {
        "task": decoding.task,
        "language": decoding.language,
        "temperature": list(options.temperature),
        "beam_size": decoding.beam_size,
        "patience": decoding.patience,
        "best_of": decoding.best_of,
        "timestamps": not decoding.without_timestamps,
        "word_timestamps": options.word_timestamps,
        "initial_prompt": options.initial_prompt,
    }


def _segment_json(segment: Segment) -> dict[str, Any]:
    """One segment as openai-whisper / OpenAI's verbose_json write it."""
    return {
        "id": segment.id,
        "seek": segment.seek,
        "start": round(segment.start, 3),
        "end": round(segment.end, 3),
        "text": segment.text,
        "tokens": list(segment.tokens),
        "temperature": segment.temperature,
        "avg_logprob": segment.avg_logprob,
        "compression_ratio": segment.compression_ratio,
        "no_speech_prob": segment.no_speech_prob,
    }


def _subtitles(transcription: Transcription, response_format: str) -> str:
    from xdna_ep.writers import to_srt, to_vtt

    return to_srt(transcription) if response_format == "srt" else to_vtt(transcription)


def _words_json(transcription: Transcription) -> list[dict[str, Any]]:
    """Every word of the recording as OpenAI's verbose_json ``words`` lists them: ``{word, start, end}``."""
    return [
        {"word": word.word.strip(), "start": round(word.start, 3), "end": round(word.end, 3)}
        for segment in transcription.segments for word in segment.words or ()
    ]


def _verbose_json(request: TranscriptionRequest, outcome: Outcome) -> dict[str, Any]:
    transcription = outcome.transcription
    body: dict[str, Any] = {
        "task": request.task,
        "language": transcription.language,
        "duration": round(outcome.audio_seconds, 3),
        "text": transcription.text,
    }
    if request.word_timestamps:
        body["words"] = _words_json(transcription)
    if request.segment_list:
        body["segments"] = [_segment_json(segment) for segment in transcription.segments]
    return body


def _text_response(request: TranscriptionRequest, outcome: Outcome) -> Response:
    if request.response_format == "text":
        body = outcome.transcription.text.strip() + "\n"
    else:
        body = _subtitles(outcome.transcription, request.response_format)
    return Response(body, media_type=TEXT_CONTENT_TYPES[request.response_format])




def _json_safe(value: Any) -> Any:
    """Dataclasses, mappings and sequences of plain values -> JSON types (None stays None)."""
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _json_safe(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, float):
        return round(value, 6)
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


# ---------------------------------------------------------------------------------------------------
# the contracts: form fields -> TranscriptionRequest


def _check_language(model: WhisperModel, language: str | None, task: str) -> str | None:
    """The one place every contract reads its ``language`` field (400 naming the problem)."""
    try:  # "auto", English names (any case) and other spellings of a code (iw -> he) are accepted
        language = normalize_language(language)
    except ValueError as error:
        raise RequestError(400, str(error), "language") from None
    if language is None:
        return None
    known = model.tokenizer.language_tokens
    if known and language not in known:
        raise RequestError(400, f"unknown language code {language!r}; known codes: {', '.join(known)}", "language")
    if not model.is_multilingual and language != "en":
        raise RequestError(400, f"model {model.name} is English-only: it cannot transcribe {language!r}", "language")
    return language


def _check_task(model: WhisperModel, task: str) -> None:
    if task == "translate" and not model.is_multilingual:
        raise RequestError(400, f"model {model.name} is English-only: translation needs a multilingual model", "task")



# a contract's two halves, and the server's one way of running a request between them:
# serve(request, parse, answer) reads the upload, parses its fields, transcribes, answers
ParseFields = Callable[["FormFields", "WhisperModel"], "TranscriptionRequest"]
Answer = Callable[["TranscriptionRequest", "Outcome"], Response]
ServeTranscription = Callable[[Request, ParseFields, Answer], Awaitable[Response]]
