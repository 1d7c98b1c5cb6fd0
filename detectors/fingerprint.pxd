# Cython declarations for fingerprint.py (pure-Python mode: the .py stays the one source). The scan of a
# text whose only literals are numbers runs over its characters as C values.
import cython

cdef bint _COMPILED

@cython.locals(out=list, n=Py_ssize_t, start=Py_ssize_t, i=Py_ssize_t, end=Py_ssize_t, c=Py_UCS4)
cpdef str scan_numbers(str sql, object literals)

cdef bint _in_name(Py_UCS4 c)

@cython.locals(q=Py_ssize_t, x=Py_ssize_t, z=Py_ssize_t, e=Py_ssize_t)
cdef Py_ssize_t _number_end(str sql, Py_ssize_t p, Py_ssize_t n)

@cython.locals(w=Py_ssize_t)
cdef Py_ssize_t _exponent_end(str sql, Py_ssize_t z, Py_ssize_t n)

@cython.locals(before=Py_UCS4, after_word=bint)
cdef bint _boundary(str sql, Py_ssize_t e, Py_ssize_t n)
