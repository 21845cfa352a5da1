# Cython declarations for reporter.py (compiled when built; see setup.py).
cimport cython

from metrics.request_stats cimport RequestStats


@cython.final
cdef class RevisionCounter:
    cdef public RequestStats stats
    cdef public long long first_adj
    cdef public long long refs
    cdef public bint live
    cpdef request_in(self, double now)
    cpdef request_out(self, double now)
