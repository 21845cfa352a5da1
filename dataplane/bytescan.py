"""Byte searches for the header passes, run by the interpreter.

A compiled module that ``cimport``s this one gets ``bytescan.pxd``'s C versions instead (libc's
``memchr`` over the bytes' buffer): this file is never compiled itself.
"""

from __future__ import annotations


def find_byte(data: bytes, start: int, end: int, byte: int) -> int:
    """The index of the first ``byte`` in ``data[start:end]``, or ``end`` if there is none."""
    i = data.find(bytes((byte,)), start, end)
    return end if i < 0 else i
