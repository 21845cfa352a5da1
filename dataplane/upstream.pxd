# Cython declarations for upstream.py (compiled when built; see setup.py).
cimport cython

# whether the simple-message passes are taken (dataplane.messages.SIMPLE_PATHS)
cdef bint SIMPLE_PATHS

from dataplane.messages cimport SimpleResponse, simple_response


cdef class ResponseSink:
    cdef public bint simple_ok
    cpdef on_headers_complete(self)
    cpdef on_simple_response(self, SimpleResponse response)
    cpdef on_body(self, body)
    cpdef on_message_complete(self)
    cpdef on_upgraded(self, rest)
    cpdef on_tunnel_data(self, data)
    cpdef flush(self)
    cpdef upstream_lost(self, exc)
    cpdef upstream_error(self, reason)
    cpdef upstream_pause_writing(self)
    cpdef upstream_resume_writing(self)


@cython.final
cdef class UpstreamConnection:
    cdef public str hostport
    cdef public object parser
    cdef public object transport
    cdef public ResponseSink sink
    cdef public bint closed
    cdef public bint reused
    cdef public double idle_since
    cdef public bytes reason
    cdef public list headers
    cdef public bint tunnel
    cdef public bint fresh
    cdef public object write
    cpdef close(self)
    cpdef abort(self)
    @cython.locals(sink=ResponseSink)
    cpdef data_received(self, data)


@cython.final
cdef class _Idle:
    cdef public list conns
    cdef public Py_ssize_t n
    cpdef push(self, UpstreamConnection conn)
    cpdef UpstreamConnection pop(self)


cdef class UpstreamPool:
    cdef public Py_ssize_t max_idle_per_host
    cdef public double idle_timeout_s
    cdef public double connect_timeout_s
    cdef public dict _idle
    cdef public dict _addr
    cdef public bint _closed
    cdef public object tls
    @cython.locals(conn=UpstreamConnection, q=_Idle)
    cpdef UpstreamConnection take_idle(self, str hostport, double now)
    @cython.locals(q=_Idle)
    cpdef release(self, UpstreamConnection conn, double now)
