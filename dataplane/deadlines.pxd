# Cython declarations for deadlines.py (compiled when built; see setup.py).
cimport cython


cdef class _Queue



@cython.final
cdef class Deadline:
    cdef public Deadline _next
    cdef public Deadline _prev
    cdef public _Queue queue
    cdef public object entry
    cdef public str kind
    cdef public double when


@cython.locals(d=Deadline)
cpdef Deadline new_deadline(object entry, str kind)


@cython.final
cdef class _Queue:
    cdef public Deadline head
    cdef public Deadline tail


cdef class Deadlines:
    cdef public double _armed
    cdef public Py_ssize_t _count
    cdef public object _handle
    cdef public double _last_duration
    cdef public _Queue _last_queue
    cdef public object _loop
    cdef public double _per_s
    cdef public dict _queues
    @cython.locals(q=_Queue, after=Deadline, following=Deadline, when=double)
    cpdef add(self, Deadline d, double start, double duration)
    @cython.locals(q=_Queue, before=Deadline, following=Deadline)
    cpdef remove(self, Deadline d)
