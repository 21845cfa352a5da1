# Cython declarations for forward.py (compiled when built; see setup.py).
cimport cython

from dataplane.deadlines cimport Deadline, new_deadline
from dataplane.headers cimport scan_response_headers, status_line
from dataplane.server cimport _Connection, HttpExchange
from dataplane.upstream cimport ResponseSink, UpstreamConnection


cdef dict _COMPLETED
cdef list _NO_HEADERS
cdef tuple _LAST_TIMEOUTS
cdef object _completed(int status)


# (not final: its methods override ResponseSink's, which a final type's may not)
cdef class Forward(ResponseSink):
    cdef public bint _body_sent
    cdef public bint _chunked_in
    cdef public bint _chunked_out
    cdef public bint _close_delimited
    cdef public UpstreamConnection _conn
    cdef public HttpExchange _ex
    cdef public bytes _head
    cdef public list _headers
    cdef public object _idle_handle
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
    cdef public object _timeouts
    cdef public Deadline _total
    cdef public double _total_s
    cdef public bint _tunnel
    cdef public str _upstream
    cdef public object _waiter
    cdef public bint streaming_body

    @cython.locals(last=tuple)
    cpdef _init(
        self, HttpExchange ex, bytes head, object timeouts, object on_done, object on_refused,
        object waiter
    )
    cpdef start(self, str upstream)
    cpdef _arm_total(self)
    cpdef expire(self, str kind)
    cpdef _resolve(self, result)
    @cython.locals(chunks=list)
    cpdef _attach(self, UpstreamConnection conn, list replay)
    cpdef send_body(self, data)
    cpdef end_body(self)
    cpdef on_headers_complete(self)
    cpdef on_simple_response(self, tuple response)
    cpdef _response_head(
        self, int status, bytes line, bytes lines, bytes length, bint chunked, bytes body=*
    )
    cpdef _response_end(self, bint keep_alive)
    cpdef on_body(self, body)
    cpdef flush(self)
    cpdef on_message_complete(self)
    cpdef _cancel_start_timer(self)
    @cython.locals(client=_Connection)
    cpdef _detach(self, bint reuse)
    cpdef _finish(self, object result, bint answered=*)
    cpdef on_upgraded(self, rest)
    cpdef on_tunnel_data(self, data)
    cpdef upstream_lost(self, exc)
    cpdef upstream_error(self, reason)
    cpdef upstream_pause_writing(self)
    cpdef upstream_resume_writing(self)
    cpdef cleanup_timers(self)
    cpdef cleanup(self)

