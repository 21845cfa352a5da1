# Cython declarations for messages.py (compiled when built; see setup.py): typed locals for the
# simple-message passes.
cimport cython

from dataplane cimport bytescan

# (a free list: one is made and dropped per message, as a tuple was, which has one)
@cython.final
@cython.freelist(16)
cdef class SimpleResponse:
    cdef public int status
    cdef public bytes status_line
    cdef public bytes lines
    cdef public bytes length
    cdef public bytes body
    cdef public bint keep_alive


# (a free list: one is made and dropped per message, as a tuple was, which has one)
@cython.final
@cython.freelist(16)
cdef class SimpleRequest:
    cdef public str method
    cdef public str target
    cdef public long long content_length
    cdef public bint keep_alive
    cdef public bytes body
    cdef public bytes raw


@cython.locals(r=SimpleResponse)
cdef SimpleResponse _new_response(
    int status, bytes line, bytes lines, bytes length, bytes body, bint keep_alive
)
@cython.locals(r=SimpleRequest)
cdef SimpleRequest _new_request(
    str method, str target, long long content_length, bint keep_alive, bytes body, bytes raw
)


# the byte tables of the simple-message passes: C globals, read through pointers
cdef bytes _TCHAR, _VCHAR, _RESPONSE_FIRST, _RESPONSE_LENGTH, _REQUEST_FIRST, _REQUEST_LENGTH


@cython.locals(
    p=cython.p_uchar,
    n=Py_ssize_t,
    d0=int,
    d1=int,
    d2=int,
    status=int,
    clen=cython.longlong,
    status_end=Py_ssize_t,
    i=Py_ssize_t,
    j=Py_ssize_t,
    v=Py_ssize_t,
    pos=Py_ssize_t,
    line_end=Py_ssize_t,
    run=Py_ssize_t,
    keep_alive=cython.bint,
    parts=list,
    length=bytes,
    low=bytes,
    drop=cython.bint,
    token=int,
    vchar=cython.p_uchar,
    first=cython.p_uchar,
    lengths=cython.p_uchar,
    lines=bytes,
)
cpdef SimpleResponse simple_response(bytes data)


@cython.locals(
    p=cython.p_uchar,
    n=Py_ssize_t,
    t=Py_ssize_t,
    i=Py_ssize_t,
    j=Py_ssize_t,
    v=Py_ssize_t,
    pos=Py_ssize_t,
    line_end=Py_ssize_t,
    clen=cython.longlong,
    keep_alive=cython.bint,
    method=str,
    target=str,
    token=int,
    first=cython.p_uchar,
    lengths=cython.p_uchar,
    prefix=bytes,
    name=str,
)
cpdef SimpleRequest simple_request(bytes data)


# a header line of a head simple_request read, and all of them
@cython.locals(p=cython.p_uchar, n=Py_ssize_t, j=Py_ssize_t, v=Py_ssize_t, end=Py_ssize_t)
cpdef (Py_ssize_t, Py_ssize_t, Py_ssize_t) raw_line(bytes raw, Py_ssize_t pos) noexcept
@cython.locals(p=cython.p_uchar, n=Py_ssize_t, pos=Py_ssize_t, j=Py_ssize_t, v=Py_ssize_t, end=Py_ssize_t, headers=list)
cpdef list raw_headers(bytes raw)


@cython.locals(k=Py_ssize_t, p=cython.p_uchar)
cpdef bint lower_is(bytes data, Py_ssize_t start, Py_ssize_t end, bytes low) except -1


# one header line of the simple-message passes, and the two values they read
@cython.locals(
    p=cython.p_uchar,
    n=Py_ssize_t,
    j=Py_ssize_t,
    v=Py_ssize_t,
    end=Py_ssize_t,
    tchar=cython.p_uchar,
    vchar=cython.p_uchar,
)
cdef (Py_ssize_t, Py_ssize_t, Py_ssize_t) _header_line(bytes data, Py_ssize_t pos) except *
@cython.locals(p=cython.p_uchar, k=Py_ssize_t, value=cython.longlong)
cdef long long _digits(bytes data, Py_ssize_t start, Py_ssize_t end) except? -2
cdef int _keep_alive(bytes data, Py_ssize_t start, Py_ssize_t end) except? -2


@cython.final
cdef class HeaderNames:
    cdef public Py_ssize_t count
    cdef public list found
    cdef public bytes firsts
    cdef public unsigned long long lengths
    cdef public tuple lows
    cdef public tuple raws
    @cython.locals(found=list, i=Py_ssize_t)
    cpdef list clear(self)


@cython.locals(
    found=list,
    p=cython.p_uchar,
    n=Py_ssize_t,
    pos=Py_ssize_t,
    left=Py_ssize_t,
    raws=tuple,
    j=Py_ssize_t,
    v=Py_ssize_t,
    end=Py_ssize_t,
    length=Py_ssize_t,
    i=Py_ssize_t,
    want=bytes,
    firsts=cython.p_uchar,
    lengths=cython.ulonglong,
)
cpdef list find_raw_headers(bytes raw, HeaderNames names)


@cython.locals(found=list, lows=tuple, k=str, v=str, n=Py_ssize_t, i=Py_ssize_t, low=str)
cpdef list find_parsed_headers(object headers, HeaderNames names)
