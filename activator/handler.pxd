# Cython declarations for handler.py (compiled when built; see setup.py): the handler and its
# per-revision lane as extension types, the hot path's locals typed.
cimport cython

from activator.reporter cimport RevisionCounter
from activator.throttler cimport Admission, RevisionThrottler
from dataplane.route cimport Route
from dataplane.messages cimport HeaderNames


@cython.locals(kubelet_probe=str, agent=str, kubelet=cython.bint)
cpdef tuple header_marks(list found)


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
    cdef public object tees
    cdef public object tracer
    cdef public object cold_starts

    @cython.locals(
        lane=_Lane,
        counter=RevisionCounter,
        admission=Admission,
        now=double,
        kubelet=cython.bint,
    )
    cpdef object handle(self, object ex)
