"""The runtime: one path for a chat, from admission to the end of its run.

``Gateway.start_chat`` admits a request and starts a :class:`~.relay.Run`; the run
relays upstream events to its subscribers; ``routing`` picks who answers. Nothing
here knows about HTTP handlers or sockets (that is ``tokenwire.server``), nor about
keys or Redis (``tokenwire.auth`` and ``tokenwire.cluster`` plug in through hooks).
"""
