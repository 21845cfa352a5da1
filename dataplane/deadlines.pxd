# Cython declarations for deadlines.py (compiled when built; see setup.py).


cdef class Deadlines:
    cdef public object _armed
    cdef public dict _buckets
    cdef public object _handle
    cdef public list _heap
    cdef public object _loop
    cdef public double _per_s
    cpdef object add(self, double when, object entry, str kind)
    cpdef remove(self, object key, object entry, str kind)
