# Cython declarations for exchange.py (compiled when built; see setup.py).
cimport cython

from dataplane.forward cimport Forward
from dataplane.headers cimport Edits, edited_request_head
from dataplane.messages cimport HeaderNames, find_parsed_headers, find_raw_headers, raw_headers
from dataplane.request cimport ClientConnection, ForwardContext, Request
from dataplane.route cimport Route
from dataplane.tee cimport tee_forward


cdef class HttpExchange


@cython.locals(fwd=Forward)
cdef Forward new_forward(
    ForwardContext ctx, Request ex, bytes head, Route route, object on_done=*,
    object on_refused=*, object waiter=*
)


@cython.locals(ex=HttpExchange)
cpdef HttpExchange new_exchange(ClientConnection conn)


cdef class DirectHandler:
    cpdef object handle(self, HttpExchange ex)


cdef class ForwardDone:
    cpdef forward_done(self, object result)


# (not final: a final type's methods may not override its base's)
cdef class HttpExchange(Request):
    cpdef list _header_list(self)
    cpdef list find_headers(self, HeaderNames names)
    cpdef forward_now(
        self, str upstream, object on_done, Route route, tuple set_headers=*,
        tuple remove_headers=*, object on_refused=*
    )
    cpdef bytes _request_head(self, Edits edits)
    cpdef object _refusal(self)
    @cython.locals(done=ForwardDone)
    cpdef _call_done(self, object on_done, object result)
    @cython.locals(fwd=Forward)
    cpdef on_body(self, data)
    @cython.locals(fwd=Forward)
    cpdef on_message_complete(self)
    cpdef _wake_body_reader(self, bint complete)
