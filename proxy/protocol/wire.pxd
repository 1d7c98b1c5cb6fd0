# Cython declarations for wire.py (pure-Python mode: the .py stays the one source). The Bind decoder,
# once per execution, reads its counts and lengths as C integers.
import cython


cdef class Bind:
    cdef public object portal, statement, param_formats, params, result_formats


@cython.locals(size=Py_ssize_t, end=Py_ssize_t, pos=Py_ssize_t, nfmt=Py_ssize_t, nparams=Py_ssize_t,
               nres=Py_ssize_t, plen=Py_ssize_t, params=list)
cpdef Bind decode_bind(bytes body)

@cython.locals(value=Py_ssize_t, out=list)
cdef tuple _int16s(bytes body, Py_ssize_t pos, Py_ssize_t n)
