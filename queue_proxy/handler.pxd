# Cython declarations for handler.py (compiled when built; see setup.py).
cimport cython


@cython.locals(name=str, value=str, low=str, proxied=cython.bint, kubelet=cython.bint)
cpdef tuple request_marks(object headers)
