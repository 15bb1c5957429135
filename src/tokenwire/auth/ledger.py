"""Budgets that hold under concurrency: a reply's worst case is reserved before it starts.

Checking ``spent < budget`` at admission and adding the cost at the end let 256
concurrent requests on a $0.01 budget spend $4.10: every one of them was admitted
before the first one ended. Instead, admission reserves what the reply can cost at
most — its prompt plus ``max_tokens`` output tokens, where ``max_tokens`` is first
cut down to what the budget left (after other replies' reservations) still buys —
and the reply's end settles the reservation with the real cost. Total spend then
stays within the budget plus the rounding of one reply.

:class:`LocalLedger` keeps the reservations in this process; :class:`RedisLedger`
keeps them (and the spend) in one Redis hash per key, changed by a Lua script, so
the same holds across every instance on that Redis.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

__all__ = ["Ledger", "LocalLedger", "RedisLedger", "affordable_tokens"]


def affordable_tokens(remaining: float, prompt_usd: float, usd_per_token: float, cap: int) -> int:
    """Output tokens that ``remaining`` dollars buy after the prompt (at most ``cap``)."""
    if usd_per_token <= 0:
        return cap if remaining - prompt_usd >= 0 else 0
    return max(0, min(cap, math.floor((remaining - prompt_usd) / usd_per_token + 1e-9)))


class Ledger(Protocol):
    async def reserve(
        self, key_id: str, budget: float, spent: float, prompt_usd: float, usd_per_token: float, cap: int
    ) -> tuple[int, float]:
        """Reserve up to ``cap`` output tokens: ``(tokens, usd reserved)``; (0, 0) if nothing is left."""
        ...

    async def settle(self, key_id: str, reserved: float, cost: float) -> None:
        """Replace a reservation by the reply's real cost."""
        ...

    async def aclose(self) -> None: ...


class LocalLedger:
    """Reservations of this process (one instance: its SQLite spend plus these is the truth)."""

    def __init__(self) -> None:
        self.reserved: dict[str, float] = {}

    async def reserve(
        self, key_id: str, budget: float, spent: float, prompt_usd: float, usd_per_token: float, cap: int
    ) -> tuple[int, float]:
        reserved = self.reserved.get(key_id, 0.0)
        tokens = affordable_tokens(budget - spent - reserved, prompt_usd, usd_per_token, cap)
        if tokens < 1:
            return 0, 0.0
        usd = prompt_usd + tokens * usd_per_token
        self.reserved[key_id] = reserved + usd
        return tokens, usd

    async def settle(self, key_id: str, reserved: float, cost: float) -> None:
        left = self.reserved.get(key_id, 0.0) - reserved
        if left > 1e-12:
            self.reserved[key_id] = left
        else:
            self.reserved.pop(key_id, None)

    async def aclose(self) -> None:
        return None


# KEYS[1]: the key's hash {spent, reserved}. ARGV: budget, spent known to the caller (from the
# key store: the starting point if Redis has none), prompt usd, usd per output token, cap.
_RESERVE = """
redis.call('HSETNX', KEYS[1], 'spent', ARGV[2])
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent'))
local known = tonumber(ARGV[2])
if known > spent then spent = known; redis.call('HSET', KEYS[1], 'spent', ARGV[2]) end
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
local remaining = tonumber(ARGV[1]) - spent - reserved
local prompt, rate, cap = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local tokens
if rate <= 0 then
  if remaining - prompt >= 0 then tokens = cap else tokens = 0 end
else
  tokens = math.floor((remaining - prompt) / rate + 1e-9)
  if tokens > cap then tokens = cap end
end
if tokens < 1 then return {0, '0'} end
local usd = prompt + tokens * rate
redis.call('HINCRBYFLOAT', KEYS[1], 'reserved', usd)
redis.call('EXPIRE', KEYS[1], 86400)
return {tokens, tostring(usd)}
"""

_SETTLE = """
redis.call('HINCRBYFLOAT', KEYS[1], 'reserved', -tonumber(ARGV[1]))
redis.call('HINCRBYFLOAT', KEYS[1], 'spent', tonumber(ARGV[2]))
redis.call('EXPIRE', KEYS[1], 86400)
return 1
"""


class RedisLedger:
    """Reservations and spend shared by every instance on one Redis (atomic: one script each).

    The hash expires a day after its last use; a crashed instance's reservations are held
    until then at most (they only ever make a budget stricter, never looser).
    """

    def __init__(self, link: Any, prefix: str) -> None:
        self.link = link
        self.prefix = prefix

    def _key(self, key_id: str) -> str:
        return f"{self.prefix}:budget:{key_id}"

    async def reserve(
        self, key_id: str, budget: float, spent: float, prompt_usd: float, usd_per_token: float, cap: int
    ) -> tuple[int, float]:
        r = self.link.redis
        tokens, usd = await self.link.call(
            r.eval(
                _RESERVE, 1, self._key(key_id), repr(budget), repr(spent), repr(prompt_usd), repr(usd_per_token), cap
            ),
            "reserving budget",
        )
        return int(tokens), float(usd)

    async def settle(self, key_id: str, reserved: float, cost: float) -> None:
        r = self.link.redis
        await self.link.call(r.eval(_SETTLE, 1, self._key(key_id), repr(reserved), repr(cost)), "settling budget")

    async def aclose(self) -> None:
        await self.link.redis.aclose()
