"""The admin HTTP API (/admin/api/...) over real sockets, and ``tokenwire keys``/``usage`` pointed at it.

Every bad input gets a clear JSON error: a bad window, an unknown key id, a non-admin key (403),
no key (401), a duplicate name, a revoked key edited; usage over a window counts per key and model.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from eventually import eventually
from procs import Proc
from secutil import cli, create_key

pytestmark = pytest.mark.timeout(90)


def call(gw: Proc, method: str, path: str, key: str | None, body: object = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = orjson.dumps(body) if body is not None else None
    req = urllib.request.Request(gw.http + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def chat(gw: Proc, key: str, model: str = "gpt-4.1") -> tuple[int, dict]:
    return call(
        gw, "POST", "/v1/chat/completions", key, {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    )


@pytest.fixture
def keyed(spawn: Callable[..., Proc], tmp_path: Path) -> Proc:
    db = tmp_path / "gw.db"
    admin, user = create_key(db, "ops", "--admin"), create_key(db, "alice")
    gw = spawn("serve", "--port", "0", env={"TOKENWIRE_DB": str(db), "TOKENWIRE_SIMULATED_SPEED": "0"})
    gw.db, gw.admin, gw.user = db, admin, user  # type: ignore[attr-defined]
    return gw


def twcli(gw: Proc, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``tokenwire ARGS`` with no database of its own: only the gateway's admin API can answer."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TOKENWIRE_")}
    clean["TOKENWIRE_DB"] = str(Path(gw.db).parent / "nothing-here" / "none.db")  # type: ignore[attr-defined]
    return subprocess.run(
        [sys.executable, "-m", "tokenwire", *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_each_bad_request_gets_a_clear_error(keyed: Proc) -> None:
    admin, user = keyed.admin, keyed.user  # type: ignore[attr-defined]
    status, body = call(keyed, "GET", "/admin/api/usage?window=forever", admin)
    assert status == 400 and body["error"]["code"] == "bad_request" and "'forever'" in body["error"]["message"]
    assert call(keyed, "GET", "/admin/api/usage?window=365d", admin)[0] == 400
    status, body = call(keyed, "PATCH", "/admin/api/keys/k_nope", admin, {"rpm": 5})
    assert status == 404 and body["error"]["code"] == "not_found" and "k_nope" in body["error"]["message"]
    status, body = call(keyed, "POST", "/admin/api/keys/k_nope/revoke", admin)
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = call(keyed, "GET", "/admin/api/generations/s_nope", admin)
    assert status == 404 and "s_nope" in body["error"]["message"]
    assert call(keyed, "GET", "/admin/api/generations?limit=0", admin)[0] == 400
    for bad, field in (
        ({"name": ""}, "name"),
        ({"name": "x", "rpm": 0}, "rpm"),
        ({"name": "x", "tpm": "10"}, "tpm"),
        ({"name": "x", "budget_usd": -1}, "budget_usd"),
        ({"name": "x", "models": [1]}, "models"),
        ({"name": "x", "admin": "yes"}, "admin"),
        ({"name": "x", "hash": "h"}, "hash"),
    ):
        status, body = call(keyed, "POST", "/admin/api/keys", admin, bad)
        assert status == 400 and field in body["error"]["message"], (bad, body)
    status, body = call(keyed, "POST", "/admin/api/keys", admin, [1, 2])
    assert status == 400 and "JSON object" in body["error"]["message"]
    status, body = call(keyed, "POST", "/admin/api/keys", admin, {"name": "alice"})
    assert status == 409 and body["error"]["code"] == "conflict" and "alice" in body["error"]["message"]
    # a non-admin key is refused every admin call (403), also the ones that would change keys
    for method, path in (("GET", "/admin/api/keys"), ("POST", "/admin/api/keys"), ("GET", "/admin/api/usage")):
        status, body = call(keyed, method, path, user, {"name": "mine"} if method == "POST" else None)
        assert status == 403 and body["error"]["code"] == "forbidden", (method, path)
    # an admin cannot lock itself out
    ops = next(k for k in call(keyed, "GET", "/admin/api/keys", admin)[1]["data"] if k["name"] == "ops")
    status, body = call(keyed, "PATCH", f"/admin/api/keys/{ops['id']}", admin, {"admin": False})
    assert status == 409 and "own admin rights" in body["error"]["message"]


def test_keys_edited_and_revoked_through_the_api_take_effect_at_once(keyed: Proc) -> None:
    admin = keyed.admin  # type: ignore[attr-defined]
    status, made = call(keyed, "POST", "/admin/api/keys", admin, {"name": "bob", "models": "claude-*"})
    assert status == 201 and made["key"].startswith("tw_") and made["models"] == ["claude-*"] and not made["admin"]
    listed = call(keyed, "GET", "/admin/api/keys", admin)[1]["data"]
    assert all("hash" not in k and not k["key"].startswith(made["key"]) for k in listed)  # never again in clear
    status, out = chat(keyed, made["key"])
    assert status == 403 and "may not use model 'gpt-4.1'" in out["error"]["message"]
    status, out = call(keyed, "PATCH", f"/admin/api/keys/{made['id']}", admin, {"models": [], "rpm": 1})
    assert status == 200 and out["models"] == [] and out["rpm"] == 1
    assert chat(keyed, made["key"])[0] == 200  # the new models, at once (no key_cache_ttl wait)
    status, out = chat(keyed, made["key"])
    assert status == 429 and "1 requests per minute" in out["error"]["message"]  # the new rpm, at once
    status, out = call(keyed, "POST", f"/admin/api/keys/{made['id']}/revoke", admin)
    assert status == 200 and out["revoked"][0]["revoked"] is not None
    status, out = chat(keyed, made["key"])
    assert status == 401 and "revoked" in out["error"]["message"]
    status, out = call(keyed, "POST", f"/admin/api/keys/{made['id']}/revoke", admin)
    assert status == 409 and "already revoked" in out["error"]["message"]
    status, out = call(keyed, "PATCH", f"/admin/api/keys/{made['id']}", admin, {"rpm": 5})
    assert status == 409 and "revoked" in out["error"]["message"]


def test_usage_over_a_window_and_a_generations_detail(keyed: Proc) -> None:
    admin, user = keyed.admin, keyed.user  # type: ignore[attr-defined]
    ids = []
    for model in ("gpt-4.1", "gpt-4.1", "claude-sonnet-4.5"):
        status, out = chat(keyed, user, model)
        assert status == 200
        ids.append(out["id"])

    def counted() -> dict | None:  # usage is written behind each reply
        u = call(keyed, "GET", "/admin/api/usage?window=15m", admin)[1]
        return u if u["total"]["requests"] == 3 else None

    u = eventually(counted, timeout=10)
    assert [k["name"] for k in u["by_key"]] == ["alice"]
    models = {m["model"]: m for m in u["by_model"]}
    assert models["gpt-4.1"]["requests"] == 2 and models["claude-sonnet-4.5"]["requests"] == 1
    assert u["by_key"][0]["cost_usd"] == pytest.approx(sum(m["cost_usd"] for m in u["by_model"]))
    assert sum(u["series"]["tokens"]) == u["total"]["tokens"] > 0
    status, g = call(keyed, "GET", f"/admin/api/generations/{ids[2]}", admin)
    assert status == 200 and g["model"] == "claude-sonnet-4.5" and g["key"]["name"] == "alice"
    events = [e["event"] for e in g["timeline"]]
    # one upstream entry: "upstream request", or "upstream attempt 1" where the summary lists attempts
    assert events[0] == "request" and events[2:] == ["first token", "completed"], events
    assert events[1] in ("upstream request", "upstream attempt 1") and g["timeline"][1]["provider"] == "simulated"
    assert g["cost_usd"] == pytest.approx(models["claude-sonnet-4.5"]["cost_usd"])
    latest = call(keyed, "GET", "/admin/api/generations?limit=2", admin)[1]["data"]
    assert [x["stream_id"] for x in latest] == [ids[2].removeprefix("chatcmpl-"), ids[1].removeprefix("chatcmpl-")]
    status, stats = call(keyed, "GET", "/admin/api/stats", admin)
    assert status == 200 and stats["generations_total"] == 3 and stats["in_flight"] == 0


def test_the_live_stream_pushes_a_snapshot_a_second_and_ends_when_the_admin_key_is_revoked(keyed: Proc) -> None:
    admin = keyed.admin  # type: ignore[attr-defined]
    status, other = call(keyed, "POST", "/admin/api/keys", admin, {"name": "ops2", "admin": True})
    assert status == 201
    req = urllib.request.Request(keyed.http + "/admin/api/live", headers={"Authorization": f"Bearer {other['key']}"})
    events: list[bytes] = []
    with urllib.request.urlopen(req, timeout=20) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")

        def read() -> None:
            for line in resp:
                if line.startswith(b"event:"):
                    events.append(line.strip())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        eventually(lambda: len(events) >= 2 or None, timeout=10)
        assert call(keyed, "POST", f"/admin/api/keys/{other['id']}/revoke", admin)[0] == 200
        reader.join(10)
    assert not reader.is_alive() and events[-1] == b"event: close" and set(events[:-1]) == {b"event: snapshot"}


def test_the_cli_manages_keys_and_reads_usage_through_a_running_gateway(keyed: Proc) -> None:
    admin, user = keyed.admin, keyed.user  # type: ignore[attr-defined]
    gw = ["--gateway", keyed.http, "--admin-key", admin]
    out = twcli(keyed, "keys", "create", "--name", "carol", "--rpm", "9", *gw)
    assert out.returncode == 0, out.stderr
    carol = out.stdout.strip()
    assert carol.startswith("tw_") and "only time it is shown" in out.stderr
    assert chat(keyed, carol)[0] == 200
    env = {"TOKENWIRE_GATEWAY": keyed.http, "TOKENWIRE_ADMIN_KEY": admin}  # the same, from the environment
    out = twcli(keyed, "keys", "list", env=env)
    assert out.returncode == 0 and "carol" in out.stdout and "active admin" in out.stdout, out.stderr
    listed = orjson.loads(twcli(keyed, "keys", "list", "--json", env=env).stdout)
    carol_id = next(k["id"] for k in listed if k["name"] == "carol")
    out = twcli(keyed, "keys", "edit", carol_id, "--tpm", "5000", env=env)
    assert out.returncode == 0 and "changed" in out.stdout, out.stderr
    assert (
        next(k for k in call(keyed, "GET", "/admin/api/keys", admin)[1]["data"] if k["id"] == carol_id)["tpm"] == 5000
    )
    out = twcli(keyed, "usage", "--window", "1h", env=env)
    assert out.returncode == 0 and "carol" in out.stdout and "gpt-4.1" in out.stdout, out.stderr
    out = twcli(keyed, "usage", "--window", "1h", "--json", env=env)
    assert orjson.loads(out.stdout)["total"]["requests"] >= 1
    # the same figures from the SQLite file, without a gateway (what the gateway wrote)
    local = cli(keyed.db, "usage", "--window", "1h", "--json")  # type: ignore[attr-defined]
    assert local.returncode == 0, local.stderr
    assert orjson.loads(local.stdout)["by_key"] == orjson.loads(out.stdout)["by_key"]
    local = cli(keyed.db, "keys", "edit", carol_id, "--rpm", "0", "--models", "gpt-*")  # type: ignore[attr-defined]
    assert local.returncode == 0 and "within key_cache_ttl" in local.stdout, local.stderr
    listed = orjson.loads(cli(keyed.db, "keys", "list", "--json").stdout)  # type: ignore[attr-defined]
    assert [(k["rpm"], k["models"]) for k in listed if k["id"] == carol_id] == [(None, ["gpt-*"])]
    out = twcli(keyed, "keys", "revoke", "carol", env=env)
    assert out.returncode == 0 and f"revoked {carol_id}" in out.stdout, out.stderr
    assert chat(keyed, carol)[0] == 401  # at once
    # refusals are one clear line, never a traceback
    out = twcli(keyed, "keys", "list", "--gateway", keyed.http, "--admin-key", user)
    assert out.returncode == 1 and "(403): key 'alice'" in out.stderr and "not an admin key" in out.stderr
    out = twcli(keyed, "keys", "revoke", "nobody", env=env)
    assert out.returncode == 1 and "no active key matches 'nobody'" in out.stderr
    out = twcli(keyed, "keys", "list", "--gateway", keyed.http)
    assert out.returncode == 2 and "--admin-key" in out.stderr
    out = twcli(keyed, "keys", "list", "--gateway", "http://127.0.0.1:9", "--admin-key", admin)
    assert out.returncode == 1 and "cannot reach the gateway" in out.stderr
    assert "Traceback" not in out.stderr
