"""Which provider answers a model name, and what happens when it fails before the first token.

``router``: names to routes (aliases, ``[routes.NAME]``, the providers' model lists).
``plan``: a route and the deployments to try, walked by ``open_stream`` (retries, fallbacks).
``deployment``: one model on one provider, its circuit breaker and observed latency.
"""

from .deployment import CLOSED, HALF_OPEN, OPEN, Deployment, Policy
from .plan import Group, Plan, Route, open_stream
from .router import ALIASES, Router, build_provider

__all__ = [
    "ALIASES",
    "CLOSED",
    "HALF_OPEN",
    "OPEN",
    "Deployment",
    "Group",
    "Plan",
    "Policy",
    "Route",
    "Router",
    "build_provider",
    "open_stream",
]
