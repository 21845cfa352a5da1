# Cython declarations for server.py (compiled when built; see setup.py).
cimport cython

from dataplane.connection cimport Connection, ServerState
from dataplane.request cimport ForwardContext
from dataplane.upstream cimport UpstreamPool


cdef class Server(ServerState):
    cdef public long long _refused_logged
    cdef public double _sweep_period
    cdef public object _server
    cdef public object _sweep_handle
