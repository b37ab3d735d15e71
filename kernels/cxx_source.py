"""What a kernel's C++ source declares, read from the source: its ``extern "C"`` signatures in the
dataflow descriptions' type names, and its file-scope static arrays (a core's data memory besides its
FIFO buffers and its stack), sized under the -D flags the kernel object is compiled with.

The descriptions take their cores' static-array buffers from here (``static_arrays``), so the verifier
counts what the C++ declares; ``tests/kernels/test_cxx_source.py`` compares the signatures with the
argument types the descriptions declare. The parser knows the subset of C++ the kernels use:
``#define`` / ``#ifdef`` / ``#ifndef`` / ``#else`` / ``#endif``, ``constexpr unsigned`` constants,
``#include "common/..."`` headers, integer ``+ - * / %`` sizes, arrays of ``float``, ``bfloat16``,
``int32_t`` and ``aie::vector<type, lanes>``. Anything else in a static array's declaration is refused
with its line.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

KERNELS_DIR = Path(__file__).resolve().parent

# C++ element type -> (dataflow dtype, bytes)
ELEMENT_TYPES = {"float": ("f32", 4), "bfloat16": ("bf16", 2), "int32_t": ("i32", 4)}

_FUNCTION = re.compile(r"\bvoid\s+(\w+)\s*\(([^)]*)\)\s*\{")
_VECTOR = re.compile(r"aie::vector<\s*(\w+)\s*,([^>]+)>")
_STATIC_ARRAY = re.compile(r"^static\s+(?!inline\b)(aie::vector<[^>]+>|\w+)\s+(.+);$")
_DECLARATOR = re.compile(r"^(\w+)((?:\[[^\]]+\])+)$")


@dataclass(frozen=True)
class StaticArray:
    """One file-scope static array of a kernel: its name, element dtype and element count."""

    name: str
    dtype: str
    elements: int


def parameter_type(parameter: str) -> str:
    """One C parameter -> the descriptions' type name: ``const bfloat16 *__restrict q`` -> ``bf16[]``."""
    words = parameter.replace("*", " * ").replace("const", " ").replace("__restrict", " ").split()
    pointer = "*" in words
    base = next((w for w in words if w in ELEMENT_TYPES), None)
    if base is None:
        raise ValueError(f"parameter {parameter.strip()!r}: element type not one of {sorted(ELEMENT_TYPES)}")
    return ELEMENT_TYPES[base][0] + ("[]" if pointer else "")


def signatures(source: Path) -> dict[str, tuple[str, ...]]:
    """Every ``extern "C"`` function of ``source`` (all preprocessor branches) -> its argument types."""
    source = Path(source)
    return dict(_signatures(source, source.read_text()))


@lru_cache(maxsize=16)
def _signatures(source: Path, text: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Cached on the source's text."""
    text = _strip_comments(text)
    start = text.find('extern "C"')
    if start < 0:
        raise ValueError(f"{source.name}: no extern \"C\" block")
    return tuple(
        (name, tuple(parameter_type(p) for p in params.split(",") if p.strip()))
        for name, params in _FUNCTION.findall(text[start:])
    )


def static_arrays(source: Path, defines: tuple[tuple[str, int], ...]) -> tuple[StaticArray, ...]:
    """The file-scope static arrays of ``source`` compiled with ``defines`` (the -D flags), in order."""
    source = Path(source)
    return _static_arrays(source, source.read_text(), tuple(sorted(defines)))


@lru_cache(maxsize=64)
def _static_arrays(source: Path, text: str, defines: tuple[tuple[str, int], ...]) -> tuple[StaticArray, ...]:
    """Cached on the source's text, so an edited source is read again."""
    values: dict[str, int] = dict(defines)
    arrays: list[StaticArray] = []
    for line in _active_lines(source, text, values):
        define = re.match(r"#define\s+(\w+)\s+(.+)$", line)
        if define:
            values[define[1]] = _evaluate(define[2], values, source, line)
            continue
        if line.startswith("#define"):
            values.setdefault(line.split()[1], 1)
            continue
        constexpr = re.match(r"constexpr\s+unsigned\s+(.+);", line)
        if constexpr:
            for item in constexpr[1].split(","):
                name, expression = item.split("=")
                values[name.strip()] = _evaluate(expression, values, source, line)
            continue
        declaration = _STATIC_ARRAY.match(line)
        if declaration is None or "[" not in declaration[2] or "(" in declaration[2]:
            continue
        element, lanes = declaration[1], 1
        vector = _VECTOR.match(element)
        if vector:
            element, lanes = vector[1], _evaluate(vector[2], values, source, line)
        if element not in ELEMENT_TYPES:
            raise ValueError(f"{source.name}: static array of {element!r} (not one of {sorted(ELEMENT_TYPES)}): {line}")
        for declarator in declaration[2].split(","):
            parts = _DECLARATOR.match(declarator.strip())
            if parts is None:
                raise ValueError(f"{source.name}: cannot size the static array {declarator.strip()!r}: {line}")
            count = lanes
            for dimension in re.findall(r"\[([^\]]+)\]", parts[2]):
                count *= _evaluate(dimension, values, source, line)
            arrays.append(StaticArray(parts[1], ELEMENT_TYPES[element][0], count))
    return tuple(arrays)


def _strip_comments(text: str) -> str:
    return re.sub(r"//[^\n]*", "", re.sub(r"/\*.*?\*/", "", text, flags=re.S))


def _active_lines(source: Path, text: str, values: dict[str, int]):
    """The lines the preprocessor keeps under ``values`` (which it updates), local headers inlined."""
    active = [True]
    for raw in text.splitlines():
        line = raw.split("//")[0].strip()
        if line.startswith("#ifdef") or line.startswith("#ifndef"):
            defined = line.split()[1] in values
            active.append(active[-1] and (defined if line.startswith("#ifdef") else not defined))
        elif line.startswith("#else"):
            active[-1] = not active[-1] and active[-2]
        elif line.startswith("#endif"):
            active.pop()
        elif active[-1]:
            include = re.match(r'#include\s+"([^"]+)"', line)
            if include:
                header = KERNELS_DIR / include[1]
                yield from _active_lines(header, header.read_text(), values)
            elif line:
                yield line


def _evaluate(expression: str, values: dict[str, int], source: Path, line: str) -> int:
    """An integer C expression of + - * / % over known names (C's integer division)."""

    def value(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name) and node.id in values:
            return values[node.id]
        if isinstance(node, ast.BinOp):
            left, right = value(node.left), value(node.right)
            operations = {ast.Add: left + right, ast.Sub: left - right, ast.Mult: left * right}
            if isinstance(node.op, (ast.Div, ast.FloorDiv)):
                return left // right
            if isinstance(node.op, ast.Mod):
                return left % right
            if type(node.op) in operations:
                return operations[type(node.op)]
        raise ValueError(f"{source.name}: cannot evaluate {ast.unparse(node)!r} in: {line}")

    return value(ast.parse(re.sub(r"(\d+)[uU]\b", r"\1", expression.split("//")[0].strip()), mode="eval").body)
