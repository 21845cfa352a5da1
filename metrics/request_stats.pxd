# Cython declarations for request_stats.py (compiled when built; see setup.py): the per-request
# accounting of the queue-proxy and the activator.
cimport cython


@cython.final
cdef class RequestStats:
    cdef public long long _concurrency
    cdef public long long _proxied_concurrency
    cdef public double _conc_time
    cdef public double _proxied_conc_time
    cdef public long long _count
    cdef public long long _proxied_count
    cdef public double _last
    cdef public double _period_start
    cdef inline void _accumulate(self, double now)
    cpdef request_in(self, double now, bint proxied=*)
    cpdef request_out(self, double now, bint proxied=*)
