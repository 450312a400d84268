"""The attack of issue 32.5 against a real gateway process, and the gateway standing it.

An attacker with a login on the same machine opened 20,400 connections that never finished their request headers:
the gateway ran out of descriptors and every client was reset for a minute. Here 5,000 such connections (half of
them trickling a byte a second, which an idle timer would never close) are held open while a normal client's
/health and /predict keep answering 200 within a few seconds; connections over serving.max_connections get a 503
with Retry-After at once; each slow one is closed serving.header_timeout_s after it opened, with a 408 naming the
setting; a 1 MB entity id gets a 422 naming the field and serving.max_string_length and is never logged; a JSON
body sent as text/plain gets a 415.

Slow for a reason (about 17 s with a model to reuse, about 40 s when it trains and deploys its own): the gateway
process starts and loads a model (~5 s), 5,000 connections are opened (~2 s) and held until their header deadline
(HEADER_TIMEOUT_S: long enough for the checks made while they are open on a loaded 2-core machine), and the closing
is watched to its end. The model of tests/integration/test_gateway_limits.py is served when that test
has deployed one in this session; otherwise one is trained and deployed under this test's own model name.
"""

from __future__ import annotations

import contextlib
import resource
import selectors
import socket
import time
from collections.abc import Iterator

import httpx
import orjson
import psutil
import pytest

from flows.deploy import deploy_model
from tests.integration.live import model_context, records, running_gateway, train
from tollgate.predlog import read_log
from tollgate.registry import proven_serving

SLOW = 5_000  # connections that never finish their request headers
HEADER_TIMEOUT_S = 6.0
MARGIN = 40  # connections left under the cap for everyone else while the slow ones are open
CAP = SLOW + MARGIN
# The model tests/integration/test_gateway_limits.py trains and deploys (its `gateway` fixture's naming), reused
# read-only when it is there; this test never trains or deploys under that name.
LIMITS_MODEL = "rollout-test_a_body_or_batch_over_its_limit_gets_413_naming_the_setting"[:50].replace("_", "-")
OWN_MODEL = "gateway-attack"
PARTIAL = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-Slow: "


def _deployed(name: str) -> bool:
    """Whether the ledger proves a Production version of the registered model `name` (False if there is none)."""
    try:
        return proven_serving(model_context(name).registry).champion is not None
    except Exception:  # not registered in this session (or no ledger for it): nothing to reuse
        return False


@pytest.fixture()
def own_fd_limit() -> Iterator[None]:
    """This test process's RLIMIT_NOFILE soft limit raised to the hard one (5,000 sockets), restored after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < SLOW + 1_000:
        pytest.skip(f"the hard descriptor limit {hard} leaves no room for {SLOW} client connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def open_slow(port: int) -> list[tuple[socket.socket, float]]:
    """SLOW connections that each sent the start of a request and then stop; (socket, when connected)."""
    out = []
    for _ in range(SLOW):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        out.append((sock, time.monotonic()))
        sock.sendall(PARTIAL)
        sock.setblocking(False)
    return out


def over_the_cap(port: int, n: int) -> tuple[int, list[bytes]]:
    """Open `n` more connections (sending nothing); how many stayed open and what the refused ones got."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(n)]
    time.sleep(0.5)
    kept, answers = 0, []
    for sock in socks:
        sock.setblocking(False)
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            kept += 1
            continue
        except ConnectionResetError:
            data = b"<reset>"
        sock.settimeout(2)
        while data and not data.endswith(b"}"):  # the rest of the 503, if it came in two pieces
            more = sock.recv(65536)
            if not more:
                break
            data += more
        answers.append(data)
    for sock in socks:
        sock.close()
    return kept, answers


def watch_closing(slow: list[tuple[socket.socket, float]], limit_s: float) -> dict[int, tuple[float, bytes]]:
    """Until every slow connection is closed by the gateway (or `limit_s` passes): every other one sends a byte a
    second; returns, per connection index, (seconds from connecting to being closed, what it received)."""
    selector = selectors.DefaultSelector()
    for i, (sock, _) in enumerate(slow):
        selector.register(sock, selectors.EVENT_READ, i)
    received = [b""] * len(slow)
    closed: dict[int, tuple[float, bytes]] = {}
    end, next_trickle = time.monotonic() + limit_s, time.monotonic() + 1.0
    while len(closed) < len(slow) and time.monotonic() < end:
        for key, _ in selector.select(timeout=0.1):
            i = key.data
            try:
                data = slow[i][0].recv(65536)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                data = b""
            received[i] += data
            if not data:
                closed[i] = (time.monotonic() - slow[i][1], received[i])
                selector.unregister(slow[i][0])
        if time.monotonic() >= next_trickle:  # a byte now and then: an idle timer would be pushed back each time
            next_trickle += 1.0
            for i in range(0, len(slow), 2):
                if i not in closed:
                    with contextlib.suppress(OSError):  # closed meanwhile: the select above will say so
                        slow[i][0].send(b"a")
    selector.close()
    return closed


def test_5000_slow_connections_do_not_starve_normal_clients(
    live_stack: dict[str, str], monkeypatch: pytest.MonkeyPatch, own_fd_limit: None
) -> None:
    # the gateway process reads these overrides from its environment (running_gateway passes it on)
    monkeypatch.setenv("TOLLGATE__SERVING__HEADER_TIMEOUT_S", str(HEADER_TIMEOUT_S))
    monkeypatch.setenv("TOLLGATE__SERVING__MAX_CONNECTIONS", str(CAP))
    reuse = _deployed(LIMITS_MODEL)
    with running_gateway(live_stack, LIMITS_MODEL if reuse else OWN_MODEL) as gw:
        ctx, url, port = gw["ctx"], gw["url"], int(gw["url"].rsplit(":", 1)[1])
        if not reuse:
            deploy_model(version=train(ctx).version, config=ctx.with_config(rollout={"auto_approve": True}))
        serving = ctx.config.serving
        assert (serving.header_timeout_s, serving.max_connections) == (HEADER_TIMEOUT_S, CAP)
        gateway = psutil.Process(gw["proc"].pid)
        fds_before, rss_before = gateway.num_fds(), gateway.memory_info().rss / 1e6

        slow = open_slow(port)
        try:
            with httpx.Client(base_url=url, timeout=10) as client:
                for request in (
                    client.build_request("GET", "/health"),
                    client.build_request("POST", "/predict", json={"records": records(5)}),
                ):
                    start = time.monotonic()
                    resp = client.send(request)
                    took = time.monotonic() - start
                    assert resp.status_code == 200 and took < 3.0, (request.url, took, resp.text[:300])
                assert len(resp.json()["predictions"]) == 5

                big = {**records(1)[0], "customer_id": "C" * 1_000_000}
                resp = client.post("/predict", json={"records": [big]})
                assert (resp.status_code, resp.json()) == (
                    422,
                    {
                        "detail": [
                            {
                                "field": "records[0].customer_id",
                                "error": "a string of 1000000 characters, over serving.max_string_length = 256",
                                "setting": "serving.max_string_length",
                                "limit": 256,
                            }
                        ]
                    },
                )
                typed_wrong = {"Content-Type": "text/plain"}
                resp = client.post("/predict", content=orjson.dumps({"records": records(2)}), headers=typed_wrong)
                assert (resp.status_code, resp.json()) == (
                    415,
                    {"error": "Content-Type 'text/plain'; expected application/json", "expected": "application/json"},
                )
            fds_during = gateway.num_fds()
            rss_mb = gateway.memory_info().rss / 1e6

            # the cap: with 5,000 slow connections open, the next ones over serving.max_connections get a 503 at once
            kept, answers = over_the_cap(port, MARGIN + 20)
            checked = time.monotonic() - slow[0][1]  # the first slow connection's deadline must not have come
            assert checked < HEADER_TIMEOUT_S - 0.5, f"the checks took {checked:.1f} s: raise HEADER_TIMEOUT_S"
            assert kept <= MARGIN and len(answers) >= 20, (kept, answers[:3])
            for answer in answers:
                head, _, body = answer.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 503 ") and b"\r\nretry-after: 6\r\n" in head, answer[:300]
                assert orjson.loads(body) == {
                    "error": f"too many open connections, over serving.max_connections = {CAP}",
                    "setting": "serving.max_connections",
                    "limit": CAP,
                }

            # each slow connection is closed HEADER_TIMEOUT_S after it opened (the tricklers too), told why
            closed = watch_closing(slow, HEADER_TIMEOUT_S + 15)
        finally:
            for sock, _ in slow:
                sock.close()
        assert len(closed) == SLOW, f"{SLOW - len(closed)} slow connections were never closed"
        lifetimes = sorted(t for t, _ in closed.values())
        assert lifetimes[0] >= HEADER_TIMEOUT_S - 0.05, f"closed early: {lifetimes[:5]}"
        assert lifetimes[-1] < HEADER_TIMEOUT_S + 5, f"closed late: {lifetimes[-5:]}"
        told = [data for _, data in closed.values() if data.startswith(b"HTTP/1.1 408 ")]
        assert len(told) >= 0.99 * SLOW, f"only {len(told)} got the 408: {next(iter(closed.values()))}"
        assert orjson.loads(told[0].partition(b"\r\n\r\n")[2]) == {
            "error": f"request headers not complete in time, over serving.header_timeout_s = {HEADER_TIMEOUT_S}",
            "setting": "serving.header_timeout_s",
            "limit": HEADER_TIMEOUT_S,
        }

        # the descriptors stayed under the cap's, and came back; normal clients were never starved
        assert fds_during <= fds_before + CAP, (fds_before, fds_during)
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200
        metrics = httpx.get(f"{url}/metrics", timeout=5).text
        counted = {
            line.split('"')[1]: float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("tollgate_limit_refusals_total{")
        }
        assert counted["header_timeout_s"] >= SLOW and counted["max_connections"] == len(answers)
        assert counted["max_string_length"] == 1 and counted["content_type"] == 1
        logged = read_log(ctx.paths.model_log(gw["name"]))
        assert logged["entity_id"].astype(str).str.len().max() <= serving.max_string_length
        fds_after = gateway.num_fds()
        print(
            f"\ngateway descriptors: {fds_before} before, {fds_during} with {SLOW} slow connections, {fds_after} "
            f"after; RSS {rss_before:.0f} MB before, {rss_mb:.0f} MB with them; slow connections closed after {lifetimes[0]:.2f}..{lifetimes[-1]:.2f} s; "
            f"{len(answers)} over the cap refused; model reused: {reuse}"
        )
