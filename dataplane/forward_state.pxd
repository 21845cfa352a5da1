# Cython declarations for forward_state.py (compiled when built; see setup.py).
cimport cython

from dataplane.deadlines cimport Deadline
from dataplane.request cimport ForwardContext, Request
from dataplane.route cimport Route
from dataplane.upstream cimport ResponseSink, UpstreamConnection

cdef list _NO_HEADERS


# (not final: Forward derives from it)
cdef class ForwardState(ResponseSink):
    cdef public bint _body_sent
    cdef public bint _chunked_in
    cdef public bint _chunked_out
    cdef public bint _close_delimited
    cdef public UpstreamConnection _conn
    cdef public ForwardContext _ctx
    cdef public Request _ex
    cdef public bytes _head
    cdef public list _headers
    cdef public object _idle_handle
    cdef public list _kept
    cdef public Py_ssize_t _kept_bytes
    cdef public double _idle_s
    cdef public bint _informational
    cdef public double _last_write
    cdef public object _loop
    cdef public object _on_done
    cdef public object _on_refused
    cdef public list _out
    cdef public list _replay
    cdef public bint _request_sent
    cdef public bint _resolved
    cdef public Deadline _start
    cdef public double _start_s
    cdef public int _status
    cdef public Route _route
    cdef public Deadline _total
    cdef public double _total_s
    cdef public bint _tunnel
    cdef public str _upstream
    cdef public object _waiter
    cdef public bint streaming_body

    cpdef _init(
        self, ForwardContext ctx, Request ex, bytes head, Route route, object on_done,
        object on_refused, object waiter
    )
    cpdef _cancel_start_timer(self)
    cpdef cleanup_timers(self)
