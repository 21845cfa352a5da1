# Cython declarations for deadlines.py (compiled when built; see setup.py).
cimport cython


cdef class Deadlines:
    cdef public object _armed
    cdef public dict _buckets
    cdef public object _handle
    cdef public list _heap
    cdef public object _loop
    cdef public double _per_s
    @cython.locals(bucket=dict, key=object)
    cpdef object add(self, double when, object entry, str kind)
    @cython.locals(bucket=dict)
    cpdef remove(self, object key, object entry, str kind)
