# Cython declarations for framing.py (pure-Python mode: the .py stays the one source). The frame pull
# runs on C integers, and a compiled caller (the tracker) calls it and reads the frame as C fields.
import cython


cdef class Framer:
    cdef public bytearray wanted
    cdef public Py_ssize_t max_message, max_body, _skip, _body_need, _body_type, _pos, _n, mtype, length
    cdef public bytes _head, _data
    cdef public object _body, body
    cdef public bint at_boundary

    cpdef start(self, object data)

    @cython.locals(data=bytes, pos=Py_ssize_t, n=Py_ssize_t, take=Py_ssize_t, mtype=Py_ssize_t,
                   length=Py_ssize_t, end=Py_ssize_t, body=bytes)
    cpdef bint next(self) except -1

    cdef bint _drained(self)
