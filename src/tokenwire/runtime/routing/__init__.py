"""Which provider answers a model name, and what happens when it fails before the first token.

``router``: names to routes (aliases, ``[routes.NAME]``, the providers' model lists).
``plan``: deployments, circuit breakers, retries and fallbacks, walked by ``open_stream``.
"""

from .plan import CLOSED, HALF_OPEN, OPEN, Deployment, Group, Plan, Policy, open_stream
from .router import ALIASES, Route, Router, build_provider

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
