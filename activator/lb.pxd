# Cython declarations for lb.py (compiled when built; see setup.py).
cimport cython


@cython.final
cdef class PodTracker:
    cdef public object _on_release
    cdef public str address
    cdef public long long capacity
    cdef public long long in_flight
    cpdef bint try_reserve(self) except -1
    cpdef release(self)
