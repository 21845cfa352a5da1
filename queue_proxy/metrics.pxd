# Cython declarations for metrics.py (compiled when built; see setup.py): the queue-proxy's
# per-request counts as typed attributes.
cimport cython


@cython.final
cdef class QueueMetrics:
    cdef public object registry
    cdef public list by_class
    cdef public list latency_counts
    cdef public double latency_sum
    cdef public dict refusal
    cdef public object _queue_depth
    cdef public object _in_flight
    cdef public object gpu_utilization
    cdef public object gpu_memory_used
    cdef public object gpu_memory_total
    cdef public tuple gpu_labels

    @cython.locals(c=Py_ssize_t, i=Py_ssize_t, bound=double)
    cpdef observe(self, int status, double seconds)
