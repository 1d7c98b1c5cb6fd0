# Cython declarations for tracker.py (pure-Python mode: the .py stays the one source, and runs as is
# where the extension is not built). The response loop pulls frames from a typed Framer, and a
# statement in flight is a C struct rather than an object with a dict of slots.
import cython

from proxy.protocol.framing cimport Framer

# message types and request kinds as C values (module-private: no other module imports them)
cdef Py_ssize_t PARSE, BIND, DESCRIBE, EXECUTE, CLOSE, SYNC, QUERY, FUNCTION, REJECTED, D
cdef bytearray _SIMPLE_COMPLETIONS, _STATEMENT_START


cdef class _Portal:
    cdef public object sql, statement, param_hashes, result_formats, row_desc, arrays


cdef class _Exec:
    cdef public object sql, protocol, statement_name, param_hashes, row_desc, result_formats, arrays
    cdef public list result_hashes
    cdef public double sent
    cdef public Py_ssize_t rows_seen, nbytes


cdef class _Query:
    cdef public list statements
    cdef public double sent
    cdef public Py_ssize_t index
    cdef public _Exec current


cdef class SessionTracker:
    cdef public object info, hasher, on_error, _texts, _lost, _pending
    cdef public list _session_bytes
    cdef public Py_ssize_t result_rows, result_cells, max_analysed, max_message, errors, resumed
    cdef public bytearray _front_wanted, _back_wanted
    cdef public Framer _front, _back
    cdef public dict _statements, _portals
    cdef public str _tx
    cdef public double _prev_done, _wall_offset
    cdef public bint terminated, fatal

    @cython.locals(frames=Framer, mtype=Py_ssize_t, length=Py_ssize_t)
    cpdef client_data(self, object data, double now)

    @cython.locals(frames=Framer)
    cpdef list server_data(self, object data, double now)

    @cython.locals(events=list, mtype=Py_ssize_t, count=Py_ssize_t, length=Py_ssize_t, kind=Py_ssize_t,
                   ex=_Exec, q=_Query, k=Py_ssize_t)
    cdef list _responses(self, Framer frames, double now)

    cdef _done(self, double now)

    cdef _Exec _start_statement(self, _Query q, double now)

    @cython.locals(cells=list, limit=Py_ssize_t, hashes=list, i=Py_ssize_t)
    cdef _hash_row(self, _Exec ex, object body)

    cdef _finish(self, _Exec ex, double now, str command, object rows, object sqlstate)
