# Cython declarations for forward.py (compiled when built; see setup.py).
cimport cython

from dataplane.deadlines cimport Deadline, new_deadline
from dataplane.headers cimport scan_response_headers, status_line
from dataplane.messages cimport SimpleResponse
from dataplane.request cimport ClientConnection, ForwardContext, Request
from dataplane.route cimport Route
from dataplane.forward_state cimport ForwardState
from dataplane.upstream cimport UpstreamConnection


cdef dict _COMPLETED
cdef object _completed(int status)


# (not final: its methods override ResponseSink's, which a final type's may not)
cdef class Forward(ForwardState):
    cpdef start(self, str upstream)
    cpdef _arm_total(self)
    cpdef expire(self, str kind)
    cpdef _resolve(self, result)
    @cython.locals(chunks=list)
    cpdef _attach(self, UpstreamConnection conn, list replay)
    cpdef send_body(self, data)
    cpdef end_body(self)
    cpdef on_headers_complete(self)
    cpdef on_simple_response(self, SimpleResponse response)
    cpdef _response_head(
        self, int status, bytes line, bytes lines, bytes length, bint chunked, bytes body=*
    )
    cpdef _response_end(self, bint keep_alive)
    cpdef on_body(self, body)
    cpdef flush(self)
    cpdef on_message_complete(self)
    @cython.locals(client=ClientConnection)
    cpdef _detach(self, bint reuse)
    cpdef _finish(self, object result, bint answered=*)
    cpdef on_upgraded(self, rest)
    cpdef on_tunnel_data(self, data)
    cpdef upstream_lost(self, exc)
    cpdef upstream_error(self, reason)
    cpdef upstream_pause_writing(self)
    cpdef upstream_resume_writing(self)
    cpdef cleanup(self)

