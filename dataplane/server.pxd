# Cython declarations for server.py (compiled when built; see setup.py).
cimport cython

from dataplane.deadlines cimport Deadlines
# whether the simple-message passes are taken (dataplane.headers.SIMPLE_PATHS)
cdef bint SIMPLE_PATHS
cdef list _NO_BODY

from dataplane.headers cimport edited_request_head, raw_headers, request_edits, simple_request
from dataplane.forward cimport Forward
from dataplane.upstream cimport UpstreamPool


cdef class HttpExchange


@cython.locals(fwd=Forward)
cdef Forward _new_forward(
    HttpExchange ex, bytes head, object timeouts, object on_done=*, object on_refused=*,
    object waiter=*
)


cdef class _Connection


@cython.locals(ex=HttpExchange)
cdef HttpExchange _new_exchange(_Connection conn)


cdef class DirectHandler:
    cpdef object handle(self, HttpExchange ex)


cdef class ForwardDone:
    cpdef forward_done(self, object result)


cdef class Server:
    cdef public object handler
    cdef public object on_bad_request
    cdef public object on_header_timeout
    cdef public object on_connection_refused
    cdef public UpstreamPool pool
    cdef public double header_timeout_s
    cdef public double keepalive_timeout_s
    cdef public Py_ssize_t max_connections
    cdef public set connections
    cdef public long long in_flight
    cdef public long long bad_requests
    cdef public long long header_timeouts
    cdef public long long refused_connections
    cdef public long long _refused_logged
    cdef public double now
    cdef public double _sweep_period
    cdef public object _server
    cdef public object _idle_event
    cdef public set _tasks
    cdef public Deadlines _deadlines
    cdef public object _sweep_handle
    cpdef request_done(self)
    cpdef Deadlines deadlines(self)
    cpdef refuse(self, _Connection conn)


@cython.final
cdef class HttpExchange:
    cdef public list _body_buf
    cdef public Py_ssize_t _body_bytes
    cdef public long long _body_read
    cdef public bint _body_done
    cdef public bint _chunked
    cdef public _Connection _conn
    cdef public long long _content_length
    cdef public bint _continue_sent
    cdef public bint _expect_continue
    cdef public Forward _forward
    cdef public list _headers
    cdef public bint _http10
    cdef public bint _keep_alive
    cdef public str _method
    cdef public bint _response_close
    cdef public bint _response_done
    cdef public bint _started
    cdef public str _target
    cdef public object _task
    cdef public bint _upgrade
    cdef public double arrived_at
    cdef public bytes raw_head

    cpdef _init(self, _Connection conn)
    cpdef list _header_list(self)
    cpdef respond_now(self, int status, bytes body=*, object headers=*)
    cpdef forward_now(
        self, str upstream, object on_done, object set_headers=*, object remove_headers=*,
        object remove_prefixes=*, object timeouts=*, object on_refused=*
    )
    cpdef bytes _request_head(self, object set_headers, object remove_headers, object remove_prefixes)
    cpdef object _refusal(self)
    cpdef _forward_refused(self, Forward fwd, object exc)
    cpdef _forward_done(self, Forward fwd, object result)
    @cython.locals(done=ForwardDone)
    cpdef _call_done(self, object on_done, object result)
    cpdef list _take_body(self)
    cpdef on_body(self, data)
    cpdef on_message_complete(self)
    cpdef bint _close_after_response(self) except -1
    cpdef _response_finished(self)


@cython.final
cdef class _Connection:
    cdef public HttpExchange _current
    cdef public bint _fresh
    cdef public Py_ssize_t _head_bytes
    cdef public bint _head_connection
    cdef public double _head_since
    cdef public object _linger_handle
    cdef public object _loop
    cdef public object _parser
    cdef public HttpExchange _parsing
    cdef public bint _pause_body
    cdef public bint _pause_pipeline
    cdef public bint _pause_upstream
    cdef public object _pipeline
    cdef public bint _reading_paused
    cdef public Server _server
    cdef public HttpExchange _starting
    cdef public Forward _tunnel
    cdef public bytes _tunnel_early
    cdef public list _url
    cdef public bint _write_paused
    cdef public object _time
    cdef public object _transport_write
    cdef public str client_ip
    cdef public bint closing
    cdef public double idle_since
    cdef public bint lost
    cdef public object transport

    cpdef _simple_request(self, tuple request)
    cpdef _start(self, HttpExchange ex)
    @cython.locals(direct=DirectHandler)
    cpdef call_handler(self, HttpExchange ex, object handler, object arg)
    cpdef sync_request_done(self, HttpExchange ex)
    cpdef exchange_response_done(self, HttpExchange ex)
    cpdef _next(self)
    cpdef pause_for_body(self)
    cpdef resume_for_body(self)
    cpdef pause_for_upstream(self, paused)
    cpdef _update_reading(self)
    cpdef write(self, data)
