# Cython declarations for headers.py (compiled when built; see setup.py): typed locals for the
# two per-request header passes.
cimport cython

from dataplane cimport bytescan
from dataplane.messages cimport lower_is, raw_headers, raw_line

# the names the request-head pass looks up for every header it looks at
cdef set _REQUEST_SPECIAL


@cython.final
cdef class Edits:
    cdef public tuple sets
    cdef public frozenset removed
    cdef public tuple prefixes
    cdef public tuple masks
    cpdef Edits with_sets(self, tuple sets)


@cython.locals(
    name=str,
    value=str,
    low=str,
    out=list,
    parts=list,
    has_forwarded=cython.bint,
    keep=cython.bint,
    sets=tuple,
    removed=frozenset,
    prefixes=tuple,
    masks=tuple,
    mask=cython.ulong,
    look=cython.bint,
    c=cython.int,
    length=Py_ssize_t,
    p=cython.p_uchar,
    n=Py_ssize_t,
    i=Py_ssize_t,
    count=Py_ssize_t,
    j=Py_ssize_t,
    v=Py_ssize_t,
    off=Py_ssize_t,
    line_end=Py_ssize_t,
    run=Py_ssize_t,
)
cpdef bytes edited_request_head(
    str method,
    str target,
    object headers,
    str client,
    bytes client_xff,
    bytes framing,
    Edits edits,
    object upgrade,
    bytes raw=*,
)


@cython.locals(name=bytes, value=bytes, low=bytes, parts=list, chunked=cython.bint)
cpdef tuple scan_response_headers(object headers)


@cython.locals(sets=tuple, removed=frozenset, prefixes=tuple)
cpdef Edits request_edits(object set_headers=*, object remove_headers=*, object remove_prefixes=*)
cpdef bytes status_line(int status, bytes reason)

cpdef bytes xff_line(str client)
