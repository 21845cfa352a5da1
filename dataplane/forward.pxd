# Cython declarations for forward.py (compiled when built; see setup.py).
cimport cython

from dataplane.deadlines cimport Deadline, new_deadline
from dataplane.headers cimport scan_response_headers, status_line
from dataplane.server cimport _Exchange
from dataplane.upstream cimport UpstreamConnection


cdef dict _COMPLETED
cdef object _completed(int status)


@cython.final
cdef class Forward:
    cdef public bint _body_sent
    cdef public bint _chunked_in
    cdef public bint _chunked_out
    cdef public bint _close_delimited
    cdef public UpstreamConnection _conn
    cdef public object _done
    cdef public _Exchange _ex
    cdef public bytes _head
    cdef public list _headers
    cdef public object _idle_handle
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
    cdef public int _status
    cdef public object _timeouts
    cdef public Deadline _total
    cdef public bint _tunnel
    cdef public str _upstream
    cdef public bint simple_ok
    cdef public bint streaming_body

    cpdef start(self, UpstreamConnection conn)
    cpdef _arm_total(self)
    cpdef expire(self, str kind)
    cpdef _resolve(self, result)
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
    cpdef _detach(self, bint reuse)
    cpdef _finish(self, object result, bint answered=*)
    cpdef cleanup_timers(self)
    cpdef cleanup(self)
