# Cython declarations for request.py (compiled when built; see setup.py).
cimport cython

from dataplane.deadlines cimport Deadlines
from dataplane.upstream cimport UpstreamPool

cdef bytes _CONTINUE
cdef list _NO_BODY


@cython.final
cdef class ForwardContext:
    cdef public UpstreamPool pool
    cdef public object loop
    cdef public object time
    cdef public Deadlines _deadlines
    cdef public set _tasks
    cpdef Deadlines deadlines(self)
    cpdef spawn(self, object coro)


# (not final, nor is Request: their subclasses override their methods)
cdef class ClientConnection:
    cdef public ForwardContext ctx
    cdef public object _loop
    cdef public object _time
    cdef public object _transport_write
    cdef public object transport
    cdef public str client_ip
    cdef public bytes xff
    cdef public bint _pause_body
    cdef public bint _pause_upstream
    cdef public bint _pause_pipeline
    cdef public bint _reading_paused
    cdef public bint _write_paused
    cdef public bint closing
    cdef public bint lost
    cpdef _init_client(self, ForwardContext ctx)
    cpdef exchange_response_done(self, Request ex)
    cpdef call_handler(self, Request ex, object handler, object arg)
    cpdef sync_request_done(self, Request ex)
    cpdef start_tunnel(self, object fwd)
    cpdef pause_for_body(self)
    cpdef resume_for_body(self)
    cpdef pause_for_upstream(self, paused)
    cpdef _update_reading(self)
    cpdef write(self, data)
    cpdef close(self)
    cpdef abort(self)


cdef class Request:
    cdef public list _body_buf
    cdef public Py_ssize_t _body_bytes
    cdef public long long _body_read
    cdef public bint _body_done
    cdef public Py_ssize_t _body_limit
    cdef public object _body_waiter
    cdef public bint _chunked
    cdef public ClientConnection _conn
    cdef public long long _content_length
    cdef public bint _continue_sent
    cdef public bint _expect_continue
    cdef public object _forward
    cdef public list _headers
    cdef public bint _http10
    cdef public bint _keep_alive
    cdef public str _method
    cdef public bint _response_close
    cdef public bint _response_done
    cdef public bint _started
    cdef public str _target
    cdef public object _task
    cdef public object _tee
    cdef public bint _upgrade
    cdef public double arrived_at
    cdef public bytes raw_head

    cpdef _init(self, ClientConnection conn)
    cpdef respond_now(self, int status, bytes body=*, object headers=*)
    cpdef _forward_refused(self, object fwd, object exc)
    cpdef _forward_done(self, object fwd, object result)
    cpdef _send_continue(self)
    cpdef list _take_body(self)
    cpdef bint _close_after_response(self) except -1
    cpdef _response_finished(self)
