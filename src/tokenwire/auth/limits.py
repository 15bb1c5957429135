"""Token buckets and per-principal state; checked once per request, never per token."""

from __future__ import annotations

from dataclasses import dataclass, field

from .keys import KeyRecord

__all__ = ["Principal", "Reservation", "TokenBucket"]


class TokenBucket:
    """``capacity`` units refilled at ``per_second``; starts full, so a burst of the full number passes.

    Requests take one unit at admission (refused when none is left). Tokens are
    not known until a reply ends, so a tokens-per-minute bucket admits while it
    is above zero and is debited by the real count at the end (it may go
    negative, which then delays the next request for as long as it takes to refill).
    """

    __slots__ = ("capacity", "level", "rate", "stamp")

    def __init__(self, capacity: float, per_second: float, now: float) -> None:
        self.capacity = float(capacity)
        self.rate = per_second
        self.level = self.capacity
        self.stamp = now

    @classmethod
    def per_minute(cls, n: int, now: float) -> TokenBucket:
        return cls(n, n / 60.0, now)

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def take(self, now: float, n: float = 1.0) -> float:
        """Take ``n`` units: 0.0 if done, else the seconds until they are there (nothing taken)."""
        self._refill(now)
        if self.level >= n:
            self.level -= n
            return 0.0
        return (n - self.level) / self.rate

    def wait_positive(self, now: float) -> float:
        """0.0 if anything is left, else the seconds until at least one unit is back."""
        self._refill(now)
        if self.level > 0:
            return 0.0
        return (1.0 - self.level) / self.rate

    def debit(self, now: float, n: float) -> None:
        """Take ``n`` units whatever is left (negative ``n`` gives back what was taken too much)."""
        self._refill(now)
        self.level = min(self.capacity, self.level - n)

    def available(self, now: float) -> float:
        self._refill(now)
        return self.level


@dataclass(slots=True)
class Reservation:
    """What an admitted reply may still cost, held from admission until it ends."""

    usd: float = 0.0  #: reserved against the key's budget
    tokens: int = 0  #: taken from the tokens-per-minute bucket (prompt + max_tokens)


@dataclass(slots=True, eq=False)
class Principal:
    """Who is asking: a key, or (without keys) an IP address; holds its live limits."""

    label: str  #: "key NAME (tw_abc…)" or "ip 1.2.3.4", for messages and logs
    record: KeyRecord | None = None
    ip: str | None = None
    checked: float = 0.0  #: monotonic time the key record was last read from the store
    sockets: int = 0
    spent: float = 0.0  #: USD, from the store at first use, then kept up to date here
    rpm: TokenBucket | None = None
    tpm: TokenBucket | None = None
    #: admitted replies not yet ended (by id of their request), with what each reserved
    in_flight: dict[int, Reservation] = field(default_factory=dict)

    @property
    def key_id(self) -> str | None:
        return self.record.id if self.record is not None else None
