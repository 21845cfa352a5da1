# C versions of bytescan.py, for the compiled modules that cimport this one (the .py is never
# compiled: its functions serve the interpreter only).
from libc.string cimport memchr


cdef inline Py_ssize_t find_byte(
    const unsigned char* data, Py_ssize_t start, Py_ssize_t end, int byte
) noexcept:
    cdef const void* hit
    if end <= start:
        return end
    hit = memchr(data + start, byte, <size_t>(end - start))
    return <Py_ssize_t>(<const unsigned char*>hit - data) if hit != NULL else end
