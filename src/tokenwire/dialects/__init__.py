"""Client dialects: one pure module per wire format a client speaks (no I/O).

A dialect turns a client's request into a :class:`~tokenwire.protocol.frames.Chat`
and a run's events into that client's bytes. The server's entry points (a socket,
an SSE response, a JSON response, polling) are the same for every dialect; adding
a dialect is one module here plus its unit tests. See :mod:`.base` for the interface.
"""
