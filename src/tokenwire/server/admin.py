"""The admin dashboard (``/admin``) and its HTTP API (``/admin/api/...``), for admin keys only.

Every route asks for a key with the ``admin`` flag (``tokenwire keys create --admin``) and
refuses, never hides: no key or an unknown one is 401, a key that is not an admin key 403,
each with the usual JSON error body. ``/admin`` itself is a static page (no data in it): it
is served with that status too, and its login form keeps the key in ``sessionStorage`` and
sends it as ``Authorization: Bearer`` on every API call, the live stream included (read
with ``fetch``, so the key never goes into a URL).

The live view is one SSE response per connected admin, writing a snapshot once a second (one
timer per admin, none per token): streams in flight from the relay's registry, the rest from
:class:`~tokenwire.runtime.recent.Recent`, an ``on_finish`` hook. All of it is read through
:func:`read_live`, the one function that looks into the gateway's runtime state. Under
``serve --workers N`` the worker that has the admin's connection adds the other workers'
figures to its own (``/admin/api/worker/...``, asked over their private Unix sockets, see
:mod:`.siblings`), so the dashboard shows the whole gateway whichever worker it reached.

The API is documented in docs/admin.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from importlib import resources
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web

from ..auth.keys import EDITABLE, KeyRecord, new_record
from ..auth.limits import Principal
from ..auth.policy import AccessPolicy
from ..auth.usage import parse_window, plan, summarize
from ..protocol.errors import GatewayError
from ..runtime.gateway import Gateway
from ..runtime.recent import Recent, live_view, merge_exports
from .errors import error_response
from .http_api import read_json_body
from .siblings import ask_siblings, from_sibling

__all__ = ["RECENT", "read_live", "setup_admin"]

log = logging.getLogger("tokenwire.admin")

RECENT: web.AppKey[Recent] = web.AppKey("tokenwire.admin.recent", Recent)
LIVE_INTERVAL = 1.0  #: seconds between two snapshots on the live stream
_BODY_LIMIT = 64 * 1024

_NO_ADMIN_KEYS = (
    "the admin API needs an admin key, and this gateway has none: create one with "
    "`tokenwire keys create --name admin --admin` and send it as 'Authorization: Bearer tw_…'"
)


def setup_admin(app: web.Application, gw: Gateway) -> None:
    """Add the admin routes to ``app`` and start remembering the last generations."""
    recent = Recent(keep=max(1, gw.settings.admin_recent))
    app[RECENT] = recent
    gw.registry.on_finish.append(recent.on_finish)
    r = app.router
    r.add_get("/admin", admin_page)
    r.add_get("/admin/", admin_page)
    r.add_get("/admin/api/whoami", whoami)
    r.add_get("/admin/api/stats", stats)
    r.add_get("/admin/api/live", live)
    r.add_get("/admin/api/usage", usage)
    r.add_get("/admin/api/keys", list_keys)
    r.add_post("/admin/api/keys", create_key)
    r.add_patch("/admin/api/keys/{ref}", edit_key)
    r.add_post("/admin/api/keys/{ref}/revoke", revoke_key)
    r.add_get("/admin/api/generations", list_generations)
    r.add_get("/admin/api/generations/{stream_id}", get_generation)
    # for the other workers only (serve --workers, server/siblings.py): this worker's own figures
    r.add_get("/admin/api/worker/state", worker_state)
    r.add_get("/admin/api/worker/generations/{stream_id}", worker_generation)


# -- who may ------------------------------------------------------------------------
def _policy(gw: Gateway) -> AccessPolicy:
    access = gw.access
    if not isinstance(access, AccessPolicy):
        raise GatewayError("forbidden", "this gateway was built without an access policy: no admin API")
    return access


async def admin_principal(request: web.Request) -> Principal:
    """The admin behind a request, or GatewayError: 401 without a (valid) key, 403 for a key
    that is not an admin key."""
    gw: Gateway = request.app["gateway"]
    policy = _policy(gw)
    p = await policy.authenticate(request)
    if not policy.keys_exist:
        raise GatewayError("unauthorized", _NO_ADMIN_KEYS)
    record = p.record
    if record is None:
        raise GatewayError("unauthorized", _NO_ADMIN_KEYS)
    if not record.admin:
        raise GatewayError(
            "forbidden",
            f"{p.label} is not an admin key (create one with `tokenwire keys create --name NAME --admin`)",
        )
    return p


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(obj), status=status, content_type="application/json", headers={"Cache-Control": "no-store"}
    )


_PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "frame-ancestors 'none'",  # (a <meta> CSP cannot say this)
}


async def admin_page(request: web.Request) -> web.Response:
    """The dashboard's page: 200 with an admin key, else the same page (its login form) with 401/403.

    A browser's first visit carries no key, so it gets the 401 and the page asks for one; the
    page holds no data, everything comes from the API with the key.
    """
    status = 200
    try:
        await admin_principal(request)
    except GatewayError as err:
        status = err.http_status
    data = resources.files("tokenwire.web").joinpath("admin.html").read_bytes()
    headers = dict(_PAGE_HEADERS)
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="tokenwire admin"'
    return web.Response(body=data, status=status, content_type="text/html", charset="utf-8", headers=headers)


def _guarded(handler: Any) -> Any:
    """``handler(request, gw, principal)`` behind the admin check, every GatewayError as JSON."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            p = await admin_principal(request)
            return await handler(request, request.app["gateway"], p)
        except GatewayError as err:
            return error_response(err)

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


# -- live ----------------------------------------------------------------------------
def read_live(gw: Gateway) -> tuple[dict[str, int], int, int]:
    """The runtime figures the live view needs: (generations in flight per model, answer tokens
    relayed so far, open sockets).

    The one place that reads the relay's registry (and nothing of runtime/metrics.py, which
    may change underneath): a generation counts as in flight until it begins to finish, and
    its tokens count from the registry's total once it has.
    """
    in_flight: dict[str, int] = {}
    tokens = gw.registry.stats.get("tokens", 0)
    for run in list(gw.registry.runs.values()):
        if run.finishing or run.gen.ended:
            continue
        model = run.route.model
        in_flight[model] = in_flight.get(model, 0) + 1
        tokens += run.gen.token_count
    return in_flight, tokens, len(gw.sessions)


def _own_state(request: web.Request, now: float, latest: int = 20, tallies: bool = True) -> dict[str, Any]:
    """This worker's live figures (``Recent.export`` and :func:`read_live`), to add up with the others'."""
    gw: Gateway = request.app["gateway"]
    in_flight, tokens, sockets = read_live(gw)
    state = request.app[RECENT].export(now, latest)
    if not tallies:  # only the latest generations are wanted
        state["models"] = []
    return state | {
        "worker": gw.worker[0] if gw.worker is not None else None,
        "draining": gw.draining,
        "in_flight_by_model": in_flight,
        "tokens_total": tokens,
        "sockets": sockets,
    }


async def _states(
    request: web.Request, now: float, latest: int = 20, tallies: bool = True
) -> tuple[list[dict[str, Any]], int]:
    """Every worker's live figures, this one's first; and how many siblings did not answer."""
    gw: Gateway = request.app["gateway"]
    states = [_own_state(request, now, latest, tallies)]
    params = {"latest": str(latest), "tallies": "1" if tallies else "0"}
    answers = await ask_siblings(gw, "/admin/api/worker/state", params)
    missing = 0
    for answer in answers:
        if answer is None or answer[0] != 200:
            missing += 1
            continue
        states.append(orjson.loads(answer[1]))
    return states, missing


async def _snapshot(request: web.Request, prev: tuple[float, int] | None) -> tuple[dict[str, Any], list[Any]]:
    """The live view of the whole gateway (every worker's, under ``--workers``) and its latest generations."""
    gw: Gateway = request.app["gateway"]
    now = time.time()
    states, missing = await _states(request, now)
    merged = merge_exports(states)
    in_flight: dict[str, int] = {}
    for state in states:
        for model, n in state["in_flight_by_model"].items():
            in_flight[model] = in_flight.get(model, 0) + n
    snap = live_view(
        now,
        request.app[RECENT].window,
        merged["models"],
        merged["errors"],
        merged["finished"],
        in_flight,
        sum(state["tokens_total"] for state in states),
        prev,
        sum(state["sockets"] for state in states),
    )
    snap["worker"] = gw.worker[0] if gw.worker is not None else None  # the one that answered
    snap["draining"] = gw.draining
    if gw.worker is not None:
        snap["workers"] = sorted(
            (
                {
                    "worker": state["worker"],
                    "in_flight": sum(state["in_flight_by_model"].values()),
                    "sockets": state["sockets"],
                    "generations_total": state["finished"],
                    "draining": state["draining"],
                }
                for state in states
            ),
            key=lambda w: w["worker"],
        )
        snap["workers_missing"] = missing
    return snap, merged["latest"]


@_guarded
async def whoami(request: web.Request, gw: Gateway, p: Principal) -> web.Response:
    """The admin key in use (the page shows who is logged in)."""
    assert p.record is not None
    return _json({"key": p.record.public()})


@_guarded
async def stats(request: web.Request, gw: Gateway, p: Principal) -> web.Response:
    """One snapshot of the live view (tokens/s over the last second is left out: it needs two)."""
    snap, latest = await _snapshot(request, None)
    return _json(snap | {"latest": latest})


@_guarded
async def live(request: web.Request, gw: Gateway, p: Principal) -> web.StreamResponse:
    """SSE: ``event: snapshot`` once a second until the client goes, the key is revoked or the
    gateway drains."""
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
    await resp.prepare(request)
    prev: tuple[float, int] | None = None
    seen = -1
    try:
        while True:
            record = p.record
            if record is None or record.revoked is not None or not record.admin:
                await resp.write(b'event: close\ndata: {"reason": "the admin key was revoked"}\n\n')
                break
            snap, latest = await _snapshot(request, prev)
            prev = (snap["t"], snap["tokens_total"])
            if snap["generations_total"] != seen:  # the latest generations only when there are new ones
                seen = snap["generations_total"]
                snap["latest"] = latest
            await resp.write(b"event: snapshot\ndata: " + orjson.dumps(snap) + b"\n\n")
            if gw.draining:
                break
            await asyncio.sleep(LIVE_INTERVAL)
    except (ConnectionError, RuntimeError):
        pass  # the admin closed the page
    with contextlib.suppress(ConnectionError, RuntimeError):
        await resp.write_eof()
    return resp


# -- usage ---------------------------------------------------------------------------
@_guarded
async def usage(request: web.Request, gw: Gateway, p: Principal) -> web.Response:
    """``?window=1h`` (15m, 6h, 7d…; default 24h): spend and tokens per key and per model, and a series."""
    try:
        window = parse_window(request.query.get("window", "24h"))
    except ValueError as exc:
        raise GatewayError("bad_request", str(exc)) from None
    policy = _policy(gw)
    now = time.time()
    first, step = plan(window, now)
    rows = await policy.store.usage_since(first, step)
    rows += _unsaved_rows(policy)
    return _json(summarize(rows, await policy.store.list(), window, now))


def _unsaved_rows(policy: AccessPolicy) -> list[Any]:
    """Usage not yet written (a store error, or the write in progress): counted, not lost."""
    out = []
    for key, (requests, prompt, completion, cost) in list(policy.unsaved_usage.items()):
        if isinstance(key, tuple) and len(key) == 3:
            key_id, model, bucket = key
            out.append((bucket, key_id, model, requests, prompt, completion, cost))
    return out


# -- keys ----------------------------------------------------------------------------
def _with_reserved(policy: AccessPolicy, record: KeyRecord) -> dict[str, Any]:
    out = record.public()
    live = policy.principals.get("k:" + record.id)
    out["in_flight"] = len(live.in_flight) if live is not None else 0
    return out


@_guarded
async def list_keys(request: web.Request, gw: Gateway, p: Principal) -> web.Response:
    policy = _policy(gw)
    return _json({"data": [_with_reserved(policy, r) for r in await policy.store.list()]})


def _limits(body: dict[str, Any], *, creating: bool) -> dict[str, Any]:
    """The editable fields of a JSON body, checked (a bad one is a ``bad_request`` naming it)."""
    unknown = set(body) - set(EDITABLE)
    if unknown:
        raise GatewayError(
            "bad_request", f"unknown field(s) {', '.join(sorted(unknown))[:200]}; editable: {', '.join(EDITABLE)}"
        )
    out: dict[str, Any] = {}
    if "name" in body or creating:
        name = body.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 100:
            raise GatewayError("bad_request", "name must be a non-empty string of at most 100 characters")
        out["name"] = name.strip()
    for field in ("rpm", "tpm"):
        if field in body:
            v = body[field]
            if v is not None and (type(v) is not int or v <= 0):
                raise GatewayError("bad_request", f"{field} must be a positive whole number, or null for no limit")
            out[field] = v
    if "budget_usd" in body:
        v = body["budget_usd"]
        if v is not None and (type(v) not in (int, float) or not v > 0 or v != v or v == float("inf")):
            raise GatewayError("bad_request", "budget_usd must be a positive number of dollars, or null for none")
        out["budget_usd"] = float(v) if v is not None else None
    if "models" in body:
        v = body["models"]
        if isinstance(v, str):
            v = [m.strip() for m in v.split(",") if m.strip()]
        if v is None:
            v = []
        if not isinstance(v, list) or not all(isinstance(m, str) and m and len(m) <= 200 for m in v) or len(v) > 100:
            raise GatewayError("bad_request", "models must be a list of model names or patterns (empty: any)")
        out["models"] = v
    if "admin" in body:
        if not isinstance(body["admin"], bool):
            raise GatewayError("bad_request", "admin must be true or false")
        out["admin"] = body["admin"]
    return out


async def _body(request: web.Request) -> dict[str, Any]:
    body = await read_json_body(request, _BODY_LIMIT)
    if not isinstance(body, dict):
        raise GatewayError("bad_request", "the body must be a JSON object")
    return body


@_guarded
async def create_key(request: web.Request, gw: Gateway, p: Principal) -> web.Response:
    """``{"name", "rpm"?, "tpm"?, "budget_usd"?, "models"?, "admin"?}`` → 201 with the key (shown once)."""
    policy = _policy(gw)
    fields = _limits(await _body(request), creating=True)
    if any(r.name == fields["name"] and r.revoked is None for r in await policy.store.list()):
        raise GatewayError("conflict", f"an active key named {fields['name']!r} exists; revoke it or pick another name")
    record, key = new_record(
        fields["name"],
        rpm=fields.get("rpm"),
        tpm=fields.get("tpm"),
        budget_usd=fields.get("budget_usd"),
        models=fields.get("models"),
        admin=fields.get("admin", False),
    )
    await policy.store.insert(record)
    policy.changed(record)
    log.info("%s created key %s (%s)%s", p.label, record.id, record.name, " with admin rights" if record.admin else "")
    return _json({**_with_reserved(policy, record), "key": key}, 201)


async def _find(policy: AccessPolicy, ref: str) -> KeyRecord:
    record = await policy.store.get(ref)
    if record is None:
        raise GatewayError("not_found", f"no key {ref[:64]!r} (give a key id, k_…)", extra={"key_id": ref[:64]})
    return record


@_guarded
async def edit_key(request: web.Request, gw: Gateway, p: Principal) -> web.Response:
    """Change a key's name, limits, budget, models or admin flag; ``null`` clears a limit."""
    policy = _policy(gw)
    record = await _find(policy, request.match_info["ref"])
    changes = _limits(await _body(request), creating=False)
    if record.revoked is not None:
        raise GatewayError("conflict", f"key {record.id} is revoked: it cannot be changed")
    if changes.get("admin") is False and record.id == p.key_id:
        raise GatewayError("conflict", "an admin cannot take its own admin rights away (use another admin key)")
    updated = await policy.store.update(record.id, changes)
    assert updated is not None
    policy.changed(updated)
    log.info("%s changed key %s: %s", p.label, record.id, ", ".join(sorted(changes)) or "nothing")
    return _json(_with_reserved(policy, updated))


@_guarded
async def revoke_key(request: web.Request, gw: Gateway, p: Principal) -> web.Response:
    """Revoke the active key(s) whose id (or name, or shown prefix, as ``tokenwire keys revoke``) is given."""
    policy = _policy(gw)
    ref = request.match_info["ref"]
    revoked = await policy.store.revoke(ref)
    if not revoked:
        known = await policy.store.get(ref)
        if known is not None and known.revoked is not None:
            raise GatewayError("conflict", f"key {known.id} is already revoked")
        raise GatewayError("not_found", f"no active key matches {ref[:64]!r}", extra={"key_id": ref[:64]})
    for r in revoked:
        policy.changed(r)
        log.info("%s revoked key %s (%s)", p.label, r.id, r.name)
    return _json({"revoked": [_with_reserved(policy, r) for r in revoked]})


# -- generations ---------------------------------------------------------------------
@_guarded
async def list_generations(request: web.Request, gw: Gateway, p: Principal) -> web.Response:
    """The last generations the gateway ended (``?limit=``, at most the number kept), every worker's."""
    raw = request.query.get("limit", "50")
    if not raw.isdigit() or not 1 <= int(raw) <= 10_000:
        raise GatewayError("bad_request", "limit must be a whole number from 1 to 10000")
    limit = int(raw)
    states, _ = await _states(request, time.time(), latest=limit, tallies=False)
    return _json({"data": merge_exports(states, limit)["latest"], "kept": request.app[RECENT].keep * len(states)})


def _own_generation(request: web.Request, sid: str) -> dict[str, Any] | None:
    """A generation this worker ended (its detail) or is running (a brief), by stream or Chat Completions id."""
    gw: Gateway = request.app["gateway"]
    recent = request.app[RECENT]
    found = recent.get(sid) or recent.get(sid.removeprefix("chatcmpl-"))  # a Chat Completions id names it too
    if found is not None:
        return found
    running = next((r for r in gw.registry.runs.values() if r.gen.stream_id == sid and not r.gen.ended), None)
    if running is None:
        return None
    return {
        "stream_id": sid,
        "status": "running",
        "model": running.route.model,
        "provider": running.route.provider.name,
        "tokens": running.gen.token_count,
    }


@_guarded
async def get_generation(request: web.Request, gw: Gateway, p: Principal) -> web.Response:
    """One generation's detail: timeline, usage, cost, error (the last ones each worker ended)."""
    sid = request.match_info["stream_id"]
    found = _own_generation(request, sid)
    if found is None:
        for answer in await ask_siblings(gw, f"/admin/api/worker/generations/{quote(sid, safe='')}"):
            if answer is not None and answer[0] == 200:
                found = orjson.loads(answer[1])
                break
    if found is None:
        who = f"each of the {len(gw.worker_sockets)} workers" if gw.worker_sockets else "this process"
        keep = request.app[RECENT].keep
        raise GatewayError("not_found", f"no generation {sid[:128]!r} among the last {keep} {who} ended")
    return _json(found)


# -- for the other workers ----------------------------------------------------------------
def _sibling_only(request: web.Request) -> None:
    if not from_sibling(request):
        raise web.HTTPNotFound()  # not an API: only the gateway's own workers reach it


async def worker_state(request: web.Request) -> web.Response:
    """This worker's live figures (``?latest=N&tallies=0|1``), for the worker answering an admin."""
    _sibling_only(request)
    latest = request.query.get("latest", "20")
    n = int(latest) if latest.isdigit() else 20
    return _json(_own_state(request, time.time(), min(max(n, 1), 10_000), request.query.get("tallies", "1") == "1"))


async def worker_generation(request: web.Request) -> web.Response:
    """One generation of this worker's, for the worker answering an admin (404 if it has none by that id)."""
    _sibling_only(request)
    found = _own_generation(request, request.match_info["stream_id"])
    if found is None:
        return _json({"error": "not here"}, 404)
    return _json(found)
