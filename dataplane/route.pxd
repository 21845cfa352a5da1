# Cython declarations for route.py (compiled when built; see setup.py).
cimport cython

from dataplane.headers cimport Edits, request_edits


@cython.final
cdef class Route:
    cdef public dict _named
    cdef public tuple _prefixes
    cdef public tuple _removes
    cdef public str body_prefix
    cdef public Edits edits
    cdef public double idle_s
    cdef public double response_start_s
    cdef public object tee
    cdef public object timeouts
    cdef public double total_s
    @cython.locals(edits=Edits, key=tuple)
    cpdef Edits edits_for(self, tuple set_headers, tuple remove_headers)
