# Cython declarations for handler.py (compiled when built; see setup.py): the handler and its
# per-revision lane as extension types, the hot path's locals typed.
cimport cython

from activator.reporter cimport RevisionCounter
from activator.throttler cimport Admission, RevisionThrottler
from dataplane.route cimport Route
from dataplane cimport bytescan
from dataplane.messages cimport lower_is, raw_line


@cython.locals(name=str, value=str, low=str, n=Py_ssize_t, kubelet=cython.bint)
cpdef tuple header_marks(object headers)


@cython.locals(
    p=cython.p_uchar,
    n=Py_ssize_t,
    pos=Py_ssize_t,
    j=Py_ssize_t,
    v=Py_ssize_t,
    end=Py_ssize_t,
    c=int,
    length=Py_ssize_t,
    kubelet=cython.bint,
)
cpdef tuple raw_header_marks(bytes raw)


@cython.final
cdef class PathCounts:
    cdef public long long hot
    cdef public long long refused
    cdef public long long waited


@cython.final
cdef class _Lane:
    cdef public object revision
    cdef public object key
    cdef public RevisionThrottler throttler
    cdef public object metrics
    cdef public RevisionCounter counter
    cdef public Route route
    cdef public object timeouts


cdef class ActivatorHandler:
    cdef public object router
    cdef public object throttler
    cdef public object reporter
    cdef public object sink
    cdef public object metrics
    cdef public bint draining
    cdef public double last_request_at
    cdef public dict _lanes
    cdef public dict _host_lanes
    cdef public object _clock
    cdef public PathCounts paths
    cdef public object not_ready_reason

    @cython.locals(
        lane=_Lane,
        counter=RevisionCounter,
        admission=Admission,
        now=double,
        kubelet=cython.bint,
    )
    cpdef object handle(self, object ex)
