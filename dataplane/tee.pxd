# Cython declarations for tee.py (compiled when built; see setup.py).
cimport cython

from dataplane.forward cimport Forward
from dataplane.request cimport Request
from dataplane.upstream cimport UpstreamConnection


cdef class TeeForward


@cython.locals(fwd=TeeForward)
cpdef Forward tee_forward(Request ex, object factory)


# (not final: its methods override Forward's, which a final type's may not)
cdef class TeeForward(Forward):
    cdef public object tee
    cpdef _failed(self, str what)
    cpdef _attach(self, UpstreamConnection conn, list replay)
    cpdef send_body(self, data)
    cpdef end_body(self)
    cpdef _response_head(
        self, int status, bytes line, bytes lines, bytes length, bint chunked, bytes body=*
    )
    cpdef on_body(self, body)
    cpdef _finish(self, object result, bint answered=*)
