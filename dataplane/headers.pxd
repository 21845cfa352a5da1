# Cython declarations for headers.py (compiled when built; see setup.py): typed locals for the
# two per-request header passes.
cimport cython


@cython.locals(
    name=str,
    value=str,
    low=str,
    out=list,
    xff=list,
    has_forwarded=cython.bint,
    sets=tuple,
    removed=frozenset,
    prefixes=tuple,
    firsts=str,
)
cpdef bytes edited_request_head(
    str method,
    str target,
    object headers,
    str client,
    bytes framing,
    tuple edits,
    object upgrade,
)


@cython.locals(name=bytes, value=bytes, low=bytes, parts=list, chunked=cython.bint)
cpdef tuple scan_response_headers(object headers)


@cython.locals(
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
    tchar=bytes,
    vchar=bytes,
    first=bytes,
    lengths=bytes,
    lines=bytes,
)
cpdef tuple simple_response(bytes data)


@cython.locals(
    n=Py_ssize_t,
    t=Py_ssize_t,
    i=Py_ssize_t,
    j=Py_ssize_t,
    k=Py_ssize_t,
    v=Py_ssize_t,
    pos=Py_ssize_t,
    line_end=Py_ssize_t,
    clen=cython.longlong,
    keep_alive=cython.bint,
    headers=list,
    method=str,
    target=str,
    tchar=bytes,
    vchar=bytes,
    first=bytes,
    lengths=bytes,
    prefix=bytes,
    name=str,
)
cpdef tuple simple_request(bytes data)


@cython.locals(k=Py_ssize_t)
cdef bint _lower_is(bytes data, Py_ssize_t start, Py_ssize_t end, bytes low) except -1
