"""Who may follow a generation: the one ownership rule, used by every entry path.

A generation started with an API key belongs to that key, on every instance
(the key id travels in the stream's Redis record). One started without a key
(open mode) can be followed by anyone who knows its id.
"""

from __future__ import annotations

from typing import Any

__all__ = ["owns"]


def owns(principal: Any, run: Any) -> bool:
    """Whether ``principal`` may attach to, poll or cancel ``run`` (a local or a remote one)."""
    owner = run.owner_key
    return owner is None or getattr(principal, "key_id", None) == owner
