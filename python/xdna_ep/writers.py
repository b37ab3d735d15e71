"""Write a Transcription as plain text, SubRip (srt), WebVTT (vtt) or JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from xdna_ep.transcribe import Transcription

FORMATS = ("txt", "srt", "vtt", "json")


def format_timestamp(seconds: float, always_include_hours: bool = False, decimal_marker: str = ".") -> str:
    """``seconds`` as ``[HH:]MM:SS.mmm`` (hours when non-zero or asked for)."""
    if seconds < 0:
        raise ValueError(f"a timestamp cannot be negative: {seconds}")
    milliseconds = round(seconds * 1000.0)
    hours, milliseconds = divmod(milliseconds, 3_600_000)
    minutes, milliseconds = divmod(milliseconds, 60_000)
    whole_seconds, milliseconds = divmod(milliseconds, 1_000)
    hours_marker = f"{hours:02d}:" if always_include_hours or hours > 0 else ""
    return f"{hours_marker}{minutes:02d}:{whole_seconds:02d}{decimal_marker}{milliseconds:03d}"


def _cue_text(text: str) -> str:
    return text.strip().replace("-->", "->")  # "-->" would end a cue's timing line


def to_txt(result: Transcription) -> str:
    """One line per segment."""
    return "".join(segment.text.strip() + "\n" for segment in result.segments)


def _cues(result: Transcription, word_cues: bool) -> list[tuple[float, float, str]]:
    """(start, end, text) of each cue: one per segment, or one per word (needs word timestamps)."""
    if not word_cues:
        return [(segment.start, segment.end, segment.text) for segment in result.segments]
    if any(segment.words is None for segment in result.segments):
        raise ValueError("one word per cue needs a transcription made with word timestamps")
    return [(word.start, word.end, word.word) for segment in result.segments for word in segment.words or []]


def to_srt(result: Transcription, word_cues: bool = False) -> str:
    """SubRip: numbered cues, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, blank line after each.
    ``word_cues``: one word per cue (a transcription made with word timestamps)."""
    cues = []
    for number, (start, end, text) in enumerate(_cues(result, word_cues), start=1):
        start_time = format_timestamp(start, always_include_hours=True, decimal_marker=",")
        end_time = format_timestamp(end, always_include_hours=True, decimal_marker=",")
        cues.append(f"{number}\n{start_time} --> {end_time}\n{_cue_text(text)}\n")
    return "\n".join(cues)


def to_vtt(result: Transcription, word_cues: bool = False) -> str:
    """WebVTT: ``WEBVTT`` header, then ``[HH:]MM:SS.mmm --> [HH:]MM:SS.mmm`` cues.
    ``word_cues``: one word per cue (a transcription made with word timestamps)."""
    cues = ["WEBVTT\n"]
    for start, end, text in _cues(result, word_cues):
        cues.append(f"{format_timestamp(start)} --> {format_timestamp(end)}\n{_cue_text(text)}\n")
    return "\n".join(cues)


def to_json(result: Transcription) -> str:
    """Everything: text, segments (with tokens, scores and, with word timestamps, ``words``: [{word,
    start, end, probability}]), language, duration, timing, stats."""
    return json.dumps(result.to_dict(), ensure_ascii=False, indent=2) + "\n"


WRITERS: dict[str, Callable[..., str]] = {"txt": to_txt, "srt": to_srt, "vtt": to_vtt, "json": to_json}
_CUE_FORMATS = ("srt", "vtt")  # the writers that take word_cues


def write_result(
    result: Transcription, stem: str, output_dir: Path, output_format: str, word_cues: bool = False
) -> list[Path]:
    """Write ``output_dir/stem.<ext>`` for ``output_format`` (one of FORMATS, or ``all``); return the paths.
    ``word_cues``: srt and vtt get one word per cue."""
    formats = FORMATS if output_format == "all" else (output_format,)
    unknown = [name for name in formats if name not in WRITERS]
    if unknown:
        raise ValueError(f"unknown output format {output_format!r}; expected one of {', '.join(FORMATS)}, all")
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in formats:
        path = output_dir / f"{stem}.{name}"
        text = WRITERS[name](result, word_cues=word_cues) if name in _CUE_FORMATS else WRITERS[name](result)
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths
