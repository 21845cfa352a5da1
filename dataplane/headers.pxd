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
