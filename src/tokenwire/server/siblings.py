"""The other workers of ``serve --workers N``, asked over their private Unix sockets.

Each worker also serves its app on a Unix socket in a directory only the gateway's user can
enter (server/workers.py). Whichever worker the kernel hands a connection to answers for the
whole gateway where that is what the caller means: ``/metrics`` adds every worker's figures
up, and the admin dashboard's live view, its latest generations and a generation's detail are
looked up in every worker. A request that came in over such a socket is a sibling's: it is
answered with the worker's own figures only (no fan-out again), and needs no key, as only the
gateway's own processes can reach the socket.

A worker that does not answer within :data:`TIMEOUT` (restarting, or gone) is left out of
that answer rather than holding it up.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

if TYPE_CHECKING:
    from ..runtime.gateway import Gateway

__all__ = ["TIMEOUT", "Answer", "ask_siblings", "from_sibling", "sibling_paths"]

TIMEOUT = 2.0  #: seconds a sibling has to answer


def from_sibling(request: web.Request) -> bool:
    """The request came in over a worker's Unix socket (another worker asking), not from a client."""
    transport = request.transport
    return transport is not None and isinstance(transport.get_extra_info("sockname"), str)


def sibling_paths(gw: Gateway) -> list[str]:
    """The other workers' sockets (none without ``--workers``)."""
    if not gw.worker_sockets:
        return []
    return [p for i, p in enumerate(gw.worker_sockets) if gw.worker is None or i != gw.worker[0]]


#: a sibling's answer: (status, body), or None if it did not answer
Answer = tuple[int, bytes] | None


async def _get(path: str, target: str, params: dict[str, str]) -> Answer:
    try:
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path)) as session:
            async with session.get(
                "http://worker" + target, params=params, timeout=aiohttp.ClientTimeout(total=TIMEOUT)
            ) as r:
                return r.status, await r.read()
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None


async def ask_siblings(gw: Gateway, target: str, params: dict[str, str] | None = None) -> list[Answer]:
    """``GET target`` on every other worker at once: each one's (status, body), or None if it did not answer."""
    paths = sibling_paths(gw)
    if not paths:
        return []
    return list(await asyncio.gather(*(_get(p, target, params or {}) for p in paths)))
