# Cython declarations for capture.py (pure-Python mode: the .py stays the one source, and runs as is
# where the extension is not built). The frame-header scan runs on C integers.
import cython

# message types and the omit table, as C values (module-private: no other module imports them)
cdef Py_ssize_t Q, S, F, X, D, Z, E, P, C
cdef bytearray _OMIT

cdef class _Stream:
    cdef public object watch, assemble, rows_limit, head, partial, completed
    cdef public Py_ssize_t max_analysed, max_message, left, cur_type, rows, z_status
    cdef public bint cur_omit

    @cython.locals(n=Py_ssize_t, pos=Py_ssize_t, take=Py_ssize_t, keep_from=Py_ssize_t, mark_type=Py_ssize_t,
                   mark_count=Py_ssize_t, mark_total=Py_ssize_t, max_analysed=Py_ssize_t, mtype=Py_ssize_t,
                   length=Py_ssize_t, end=Py_ssize_t, omit=bint, watch=bytearray)
    cpdef tuple feed(self, bytes data)


cdef class CaptureBuffer:
    cdef public bytearray buf
    cdef public Py_ssize_t limit, dropped, prepared_limit, prepared_bytes, prepared_refused
    cdef public bint blocked

    cpdef add(self, long long conn_id, int kind, double now, object data)


cdef class SessionGauge:
    cdef public object info, prepared, _tx
    cdef public CaptureBuffer capture
    cdef public _Stream _front, _back
    cdef public Py_ssize_t outstanding, _prepared_bytes
    cdef public long long conn_id
    cdef public bint unsynced, terminated, fatal, gap, stopped
    cdef public double _client_at, _server_at

    @cython.locals(clean=bint, statements=Py_ssize_t, mtype=Py_ssize_t, start=Py_ssize_t, end=Py_ssize_t,
                   front=_Stream, seen=list)
    cpdef client_data(self, bytes data, double now)

    @cython.locals(mtype=Py_ssize_t, start=Py_ssize_t, end=Py_ssize_t, back=_Stream, seen=list)
    cpdef list server_data(self, bytes data, double now)

    @cython.locals(capture=CaptureBuffer)
    cpdef _ship(self, int kind, double now, object payload, Py_ssize_t statements, bint clean)
