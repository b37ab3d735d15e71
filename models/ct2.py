"""Reader for CTranslate2's ``model.bin``: named tensors, no CTranslate2 needed.

The format (CTranslate2 ``src/models/model.cc``), all little-endian:

    uint32 binary_version                  (this reader: 5 or 6)
    string spec_name, uint32 spec_revision
    uint32 n_variables, then per variable:
        string name, uint8 rank, uint32 dims[rank], uint8 dtype, uint32 n_bytes, bytes data
    uint32 n_aliases, then per alias: string alias, string target

where ``string`` is a uint16 length followed by that many bytes, the last one a NUL.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xdna_ep.errors import ModelError

# CTranslate2 DataType codes -> NumPy dtypes (bfloat16 is widened to float32 on read).
_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
}
_BFLOAT16 = 5
_SUPPORTED_VERSIONS = (5, 6)


@dataclass(frozen=True)
class Ct2Model:
    """The contents of one ``model.bin``: spec name, revision and every variable by name (aliases resolved)."""

    spec_name: str
    spec_revision: int
    variables: dict[str, np.ndarray]

    def get(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """The variable ``name`` as float32 (or its integer type), checked against ``shape`` when given."""
        if name not in self.variables:
            raise ModelError(f"model.bin has no tensor '{name}' (spec {self.spec_name})")
        array = self.variables[name]
        if shape is not None and tuple(array.shape) != tuple(shape):
            raise ModelError(f"model.bin tensor '{name}' has shape {tuple(array.shape)}, expected {tuple(shape)}")
        return array


class _Cursor:
    """Reads the format's primitive values from a bytes buffer, failing with the offset on truncation."""

    def __init__(self, data: bytes | memoryview, source: str) -> None:
        self.data = memoryview(data)
        self.offset = 0
        self.source = source

    def take(self, n_bytes: int) -> memoryview:
        end = self.offset + n_bytes
        if end > len(self.data):
            raise ModelError(
                f"{self.source} is truncated: needed {n_bytes} bytes at offset {self.offset}, "
                f"file has {len(self.data)}"
            )
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def string(self) -> str:
        (length,) = self.unpack("H")
        raw = bytes(self.take(length))
        return raw.rstrip(b"\0").decode("utf-8")


def parse_model_bin(data: bytes | memoryview, source: str = "model.bin") -> Ct2Model:
    """Parse the bytes of a CTranslate2 ``model.bin``."""
    cursor = _Cursor(data, source)
    (version,) = cursor.unpack("I")
    if version not in _SUPPORTED_VERSIONS:
        raise ModelError(
            f"{source} is not a CTranslate2 model.bin this reader knows (binary version {version}, "
            f"supported {_SUPPORTED_VERSIONS})"
        )
    spec_name = cursor.string()
    (spec_revision,) = cursor.unpack("I")
    (n_variables,) = cursor.unpack("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(n_variables):
        name = cursor.string()
        (rank,) = cursor.unpack("B")
        dims = cursor.unpack("I" * rank)
        (dtype_code,) = cursor.unpack("B")
        (n_bytes,) = cursor.unpack("I")
        raw = cursor.take(n_bytes)
        variables[name] = _to_array(raw, dtype_code, dims, name, source)
    (n_aliases,) = cursor.unpack("I")
    for _ in range(n_aliases):
        alias, target = cursor.string(), cursor.string()
        if target not in variables:
            raise ModelError(f"{source}: alias '{alias}' points to missing tensor '{target}'")
        variables[alias] = variables[target]
    return Ct2Model(spec_name, spec_revision, variables)


def _to_array(raw: memoryview, dtype_code: int, dims: tuple[int, ...], name: str, source: str) -> np.ndarray:
    n_items = int(np.prod(dims)) if dims else 1
    if dtype_code == _BFLOAT16:
        if len(raw) != 2 * n_items:
            raise ModelError(f"{source}: tensor '{name}' holds {len(raw)} bytes, expected {2 * n_items}")
        widened = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return widened.view(np.float32).reshape(dims)
    if dtype_code not in _DTYPES:
        raise ModelError(f"{source}: tensor '{name}' has unknown dtype code {dtype_code}")
    dtype = _DTYPES[dtype_code]
    if len(raw) != dtype.itemsize * n_items:
        raise ModelError(f"{source}: tensor '{name}' holds {len(raw)} bytes, expected {dtype.itemsize * n_items}")
    array = np.frombuffer(raw, dtype=dtype).reshape(dims)
    return array.astype(np.float32) if dtype.kind == "f" else array.copy()


def read_model_bin(parts: list[Path]) -> Ct2Model:
    """Read a ``model.bin`` stored as one file or as several parts to be joined in order."""
    for part in parts:
        if not part.is_file():
            raise ModelError(f"weights file not found: {part}")
    data = b"".join(part.read_bytes() for part in parts)
    source = " + ".join(str(p) for p in parts)
    return parse_model_bin(data, source)
