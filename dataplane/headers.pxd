# Cython declarations for headers.py (compiled when built; see setup.py): typed locals for the
# two per-request header passes.
cimport cython


@cython.locals(name=str, value=str, low=str, out=list, xff=list, has_forwarded=cython.bint)
cpdef bytes _request_head(
    str method,
    str target,
    object headers,
    str client,
    bytes framing,
    tuple sets,
    frozenset removed,
    tuple prefixes,
    str firsts,
    object upgrade,
)


@cython.locals(name=bytes, value=bytes, low=bytes, parts=list, chunked=cython.bint)
cpdef tuple scan_response_headers(object headers)
