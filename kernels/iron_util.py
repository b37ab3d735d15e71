"""Helpers the IRON designs share: loops whose bounds the instruction stream sets at run time.

The designs keep their xclbin independent of the runtime shape: the runtime sequence writes the loop
counts into a runtime-parameter buffer (``rt.write_rtp``), and the cores loop with ``scf.while`` over
them, as mlir-aie's ``single_core_dynamic_iron.py`` does. Imported only by the designs (it needs the
MLIR-AIE Python packages).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

RTP_WORDS = 16


def resolve(profile_name: str, runtime):
    """The MLIR module of a design: the whole array of ``profile_name`` ("npu1": 4 columns, "npu2")."""
    from aie.iron import Program
    from aie.iron.device import NPU1Col4, NPU2
    from aie.iron.placers import SequentialPlacer

    device = {"npu1": NPU1Col4, "npu2": NPU2}[profile_name]()
    return Program(device, runtime).resolve_program(SequentialPlacer())


def rtp_buffer(name: str):
    """A runtime-parameter buffer of RTP_WORDS int32 the runtime sequence writes before starting."""
    from aie.iron import Buffer

    return Buffer(type=np.ndarray[(RTP_WORDS,), np.dtype[np.int32]], name=name, use_write_rtp=True)


def rtp_index(rtp, word: int):
    """RTP word ``word`` as an MLIR index value (read on the core)."""
    from aie.dialects.arith import IndexCastOp
    from aie.dialects.memref import LoadOp
    from aie.extras.dialects.arith import constant
    from aie.ir import IndexType

    value = LoadOp(rtp.op, [constant(word, index=True)]).result
    return IndexCastOp(IndexType.get(), value).result


def while_range(bound, body: Callable[[object], None]) -> None:
    """for i in range(bound): body(i), with ``bound`` an MLIR index value known only at run time."""
    from aie.dialects.arith import AddIOp, CmpIOp, CmpIPredicate
    from aie.dialects.scf import WhileOp, condition, yield_
    from aie.extras.dialects.arith import constant
    from aie.ir import IndexType, InsertionPoint

    index = IndexType.get()
    zero, one = constant(0, index=True), constant(1, index=True)
    loop = WhileOp([index], [zero])
    before = loop.before.blocks.append(index)
    with InsertionPoint(before):
        i = before.arguments[0]
        condition(CmpIOp(CmpIPredicate.slt, i, bound).result, [i])
    after = loop.after.blocks.append(index)
    with InsertionPoint(after):
        i = after.arguments[0]
        body(i)
        yield_([AddIOp(i, one).result])
