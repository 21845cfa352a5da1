# Cython declarations for throttler.py (compiled when built; see setup.py): the per-request
# objects of the throttler as extension types.
cimport cython

from activator.lb cimport PodTracker


cdef class InfiniteBreaker:
    cdef public bint _open
    cdef public long long _in_flight
    cdef public list _waiters
    cdef public object _release_slot
    cpdef object reserve(self)
    cpdef _release(self)


cdef class RevisionThrottler:
    cdef public list _assigned
    cdef public object _breaker
    cdef public set _orphans
    cdef public object _peers
    cdef public list _pick_waiters
    cdef public object _policy
    cdef public long long _queue_depth
    cdef public object _rng
    cdef public dict _trackers
    cdef public long long container_concurrency
    cdef public object key
    cpdef _on_release(self, PodTracker tracker)
    @cython.locals(assigned=list, tracker=PodTracker)
    cpdef Admission try_admit(self)


@cython.final
cdef class Admission:
    cdef public RevisionThrottler _throttler
    cdef public PodTracker tracker
    cdef public object _slot
    cdef public object tried
    @cython.locals(tracker=PodTracker)
    cpdef release(self)
