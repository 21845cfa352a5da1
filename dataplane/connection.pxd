# Cython declarations for connection.py (compiled when built; see setup.py).
cimport cython

# whether the simple-message passes are taken (dataplane.messages.SIMPLE_PATHS)
cdef bint SIMPLE_PATHS

from dataplane.exchange cimport DirectHandler, HttpExchange, new_exchange
from dataplane.forward cimport Forward
from dataplane.headers cimport xff_line
from dataplane.messages cimport SimpleRequest, simple_request
from dataplane.request cimport ClientConnection, ForwardContext, Request
from dataplane.upstream cimport UpstreamPool


cdef class Connection


cdef class ServerState:
    cdef public object handler
    cdef public UpstreamPool pool
    cdef public ForwardContext ctx
    cdef public double header_timeout_s
    cdef public double keepalive_timeout_s
    cdef public Py_ssize_t max_connections
    cdef public object on_bad_request
    cdef public object on_header_timeout
    cdef public object on_connection_refused
    cdef public set connections
    cdef public long long in_flight
    cdef public long long bad_requests
    cdef public long long header_timeouts
    cdef public long long refused_connections
    cdef public double now
    cdef public object _idle_event
    cpdef request_done(self)
    cpdef refuse(self, Connection conn)


# (not final: a final type's methods may not override its base's)
cdef class Connection(ClientConnection):
    cdef public HttpExchange _current
    cdef public bint _fresh
    cdef public Py_ssize_t _head_bytes
    cdef public bint _head_connection
    cdef public double _head_since
    cdef public object _linger_handle
    cdef public object _parser
    cdef public HttpExchange _parsing
    cdef public object _pipeline
    cdef public ServerState _server
    cdef public HttpExchange _starting
    cdef public Forward _tunnel
    cdef public bytes _tunnel_early
    cdef public list _url
    cdef public double idle_since

    cpdef _simple_request(self, SimpleRequest request)
    cpdef _start(self, HttpExchange ex)
    @cython.locals(direct=DirectHandler)
    cpdef call_handler(self, Request ex, object handler, object arg)
    cpdef sync_request_done(self, Request ex)
    cpdef exchange_response_done(self, Request ex)
    cpdef _next(self)
