# Cython declarations for headers.py (compiled when built; see setup.py): typed locals for the
# two per-request header passes.
cimport cython

from dataplane cimport bytescan

# the byte tables of the simple-message passes: C globals, read through pointers
cdef bytes _TCHAR, _VCHAR, _RESPONSE_FIRST, _RESPONSE_LENGTH, _REQUEST_FIRST, _REQUEST_LENGTH
# the names the request-head pass looks up for every header it looks at
cdef set _REQUEST_SPECIAL
# caches of the request-head pass
cdef dict _EDITS, _XFF_LINES
cdef tuple _LAST_EDITS


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
    bytes framing,
    tuple edits,
    object upgrade,
    bytes raw=*,
)


@cython.locals(name=bytes, value=bytes, low=bytes, parts=list, chunked=cython.bint)
cpdef tuple scan_response_headers(object headers)


@cython.locals(
    p=cython.p_uchar,
    n=Py_ssize_t,
    d0=int,
    d1=int,
    d2=int,
    status=int,
    clen=cython.longlong,
    status_end=Py_ssize_t,
    i=Py_ssize_t,
    j=Py_ssize_t,
    v=Py_ssize_t,
    pos=Py_ssize_t,
    line_end=Py_ssize_t,
    run=Py_ssize_t,
    keep_alive=cython.bint,
    parts=list,
    length=bytes,
    low=bytes,
    drop=cython.bint,
    token=int,
    vchar=cython.p_uchar,
    first=cython.p_uchar,
    lengths=cython.p_uchar,
    lines=bytes,
)
cpdef tuple simple_response(bytes data)


@cython.locals(
    p=cython.p_uchar,
    n=Py_ssize_t,
    t=Py_ssize_t,
    i=Py_ssize_t,
    j=Py_ssize_t,
    v=Py_ssize_t,
    pos=Py_ssize_t,
    line_end=Py_ssize_t,
    clen=cython.longlong,
    keep_alive=cython.bint,
    method=str,
    target=str,
    token=int,
    first=cython.p_uchar,
    lengths=cython.p_uchar,
    prefix=bytes,
    name=str,
)
cpdef tuple simple_request(bytes data)


# a header line of a head simple_request read, and all of them
@cython.locals(p=cython.p_uchar, n=Py_ssize_t, j=Py_ssize_t, v=Py_ssize_t, end=Py_ssize_t)
cpdef (Py_ssize_t, Py_ssize_t, Py_ssize_t) raw_line(bytes raw, Py_ssize_t pos) noexcept
@cython.locals(p=cython.p_uchar, n=Py_ssize_t, pos=Py_ssize_t, j=Py_ssize_t, v=Py_ssize_t, end=Py_ssize_t, headers=list)
cpdef list raw_headers(bytes raw)


@cython.locals(k=Py_ssize_t, p=cython.p_uchar)
cpdef bint lower_is(bytes data, Py_ssize_t start, Py_ssize_t end, bytes low) except -1


# one header line of the simple-message passes, and the two values they read
@cython.locals(
    p=cython.p_uchar,
    n=Py_ssize_t,
    j=Py_ssize_t,
    v=Py_ssize_t,
    end=Py_ssize_t,
    tchar=cython.p_uchar,
    vchar=cython.p_uchar,
)
cdef (Py_ssize_t, Py_ssize_t, Py_ssize_t) _header_line(bytes data, Py_ssize_t pos) except *
@cython.locals(p=cython.p_uchar, k=Py_ssize_t, value=cython.longlong)
cdef long long _digits(bytes data, Py_ssize_t start, Py_ssize_t end) except? -2
cdef int _keep_alive(bytes data, Py_ssize_t start, Py_ssize_t end) except? -2


@cython.locals(sets=tuple, removes=tuple, prefixes=tuple, edits=tuple, last=tuple)
cpdef tuple request_edits(object set_headers=*, object remove_headers=*, object remove_prefixes=*)
cpdef bytes status_line(int status, bytes reason)

cdef bytes _xff_line(str client)
