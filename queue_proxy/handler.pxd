# Cython declarations for handler.py (compiled when built; see setup.py).
cimport cython

from dataplane.messages cimport HeaderNames
from dataplane.exchange cimport DirectHandler, ForwardDone, HttpExchange
from dataplane.route cimport Route
from metrics.request_stats cimport RequestStats
from queue_proxy.metrics cimport QueueMetrics


@cython.locals(kubelet_probe=str, agent=str, kubelet=cython.bint)
cpdef tuple request_marks(list found)


@cython.final
cdef class _Accounting:
    cdef public object loop_time
    cdef public QueueMetrics metrics
    cdef public RequestStats requests
    cpdef count_failure(self, object result)
    @cython.locals(end=double)
    cpdef finish(self, HttpExchange ex, bint proxied, int status)


# (not final, nor is QueueHandler: a final type may not override its base's methods)
cdef class _Done(ForwardDone):
    cdef public _Accounting acc
    cdef public HttpExchange ex
    cdef public bint proxied
    cdef public object release
    cpdef forward_done(self, object result)


@cython.locals(done=_Done)
cpdef _Done _new_done(_Accounting acc, HttpExchange ex, bint proxied, object release)


cpdef tuple _host_edits(str host)


cdef class QueueHandler(DirectHandler):
    cdef public _Accounting acc
    cdef public bint arrival_clock
    cdef public object batcher
    cdef public object breaker
    cdef public object clock
    cdef public object drainer
    cdef public dict forward_attributes
    cdef public object readiness
    cdef public dict refusal
    cdef public RequestStats requests
    cdef public Route route
    cdef public object timeouts
    cdef public object tracer
    cdef public str upstream
    @cython.locals(
        raw=bytes, proxied=cython.bint, kubelet=cython.bint, host=str, probe=str, release=object
    )
    cpdef object handle(self, HttpExchange ex)
