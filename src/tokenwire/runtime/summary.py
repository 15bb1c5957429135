"""The one record of how a generation ended, handed to every ``on_finish`` hook.

The relay computes status, usage, timing and cost once, when a run ends (the same
figures its ``end`` event carries); metrics, logs and billing read them from here
instead of re-decoding the log or pricing the usage again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..protocol.errors import GatewayError
from ..protocol.frames import Chat

if TYPE_CHECKING:
    from .routing.plan import Attempt

__all__ = ["RunSummary"]


@dataclass(frozen=True, slots=True)
class RunSummary:
    stream_id: str
    status: str  #: "completed", "cancelled" or "failed"
    finish_reason: str | None  #: as in ``end``: the provider's, or "cancelled" / "error"
    model: str  #: the catalog name that answered
    provider: str
    #: prompt_tokens, completion_tokens, total_tokens (+ the provider's extras), as in ``end``
    usage: dict[str, Any]
    usage_estimated: bool  #: the provider reported no usage: counted here
    #: ttft_ms, tokens_per_s, total_ms, as in ``end``
    timing: dict[str, Any]
    cost_usd: float | None  #: at this gateway's catalog prices; None when the model has no price
    tokens: int  #: answer tokens relayed (token events)
    resumable: bool
    chat: Chat = field(repr=False)  #: the request it answered (``chat.owner``: who asked, if anyone)
    reason: str | None = None  #: why it was cancelled
    error: GatewayError | None = None  #: why it failed
    upstream_model: str | None = None  #: the id the provider said answered, when it differs
    reply: str = field(default="", repr=False)  #: the answer text
    store_error: str | None = None  #: why the turn could not be stored in its conversation
    started_ns: int = 0  #: time.time_ns() when the generation began (``timing`` is relative to it)
    #: every request made to a provider before the first token (retries and fallbacks), in order
    attempts: tuple[Attempt, ...] = ()
    trace: Any = None  #: its spans' ids, a runtime.tracing.TraceIds (None unless tracing is on)
    resumes: tuple[int, ...] = ()  #: time.time_ns() of each re-attach while it ran
    #: the longest pause between two tokens, as sampled every LAG_INTERVAL by runtime.metrics (seconds; 0
    #: when none was seen); None under two tokens. Metrics' token-gap histogram reads it.
    max_gap_s: float | None = None

    @property
    def owner(self) -> Any:
        """Who asked: the access policy's principal (None without one)."""
        return self.chat.owner

    @property
    def prompt(self) -> Any:
        """The request's messages (or ``content``), for debug logging only."""
        chat = self.chat
        return chat.messages if chat.messages is not None else chat.content

    @property
    def billable(self) -> bool:
        """A run refused upstream before anything was generated costs nothing."""
        return not (self.status == "failed" and self.tokens == 0)

    @property
    def upstream_status(self) -> int | None:
        """The provider's HTTP status behind a failure, if it sent one."""
        return self.error.status if self.error is not None else None
