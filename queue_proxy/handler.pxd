# Cython declarations for handler.py (compiled when built; see setup.py).
cimport cython

from dataplane cimport _bytes
from dataplane.headers cimport lower_is, raw_line
from metrics.request_stats cimport RequestStats
from queue_proxy.metrics cimport QueueMetrics


@cython.locals(name=str, value=str, low=str, proxied=cython.bint, kubelet=cython.bint)
cpdef tuple request_marks(object headers)


@cython.locals(
    p=cython.p_uchar,
    n=Py_ssize_t,
    pos=Py_ssize_t,
    j=Py_ssize_t,
    v=Py_ssize_t,
    end=Py_ssize_t,
    c=int,
    proxied=cython.bint,
    kubelet=cython.bint,
)
cpdef tuple raw_request_marks(bytes raw)


@cython.final
cdef class _Accounting:
    cdef public object loop_time
    cdef public QueueMetrics metrics
    cdef public RequestStats requests
    cpdef count_failure(self, object result)
    @cython.locals(end=double)
    cpdef finish(self, object ex, bint proxied, int status)


@cython.final
cdef class _Done:
    cdef public _Accounting acc
    cdef public object ex
    cdef public bint proxied
    cdef public object release


@cython.locals(done=_Done)
cpdef _Done _new_done(_Accounting acc, object ex, bint proxied, object release)
