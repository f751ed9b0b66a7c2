"""What the agent's probes answer, on a fake clock and over real HTTP."""

from __future__ import annotations

import urllib.error
import urllib.request

from natlens.agent.health.server import Health, serve


def test_live_until_the_loop_stalls_and_ready_once_rules_were_read() -> None:
    now = [100.0]
    h = Health(stall_after=30, clock=lambda: now[0])
    assert h.live() == (True, "ok")
    assert h.readiness() == (False, "starting")
    h.ready = True
    assert h.readiness() == (True, "ok")
    now[0] += 31
    ok, why = h.live()
    assert not ok and "stalled for 31s" in why
    assert not h.readiness()[0]
    h.beat()
    assert h.live()[0]


def test_http_endpoints() -> None:
    h = Health()
    srv = serve(h, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        assert urllib.request.urlopen(f"{base}/healthz", timeout=5).read() == b"ok\n"
        for path, code in (("/readyz", 503), ("/nope", 404)):
            try:
                urllib.request.urlopen(base + path, timeout=5)
                raise AssertionError(f"{path} answered 200")
            except urllib.error.HTTPError as e:
                assert e.code == code
        h.ready = True
        assert urllib.request.urlopen(f"{base}/readyz", timeout=5).status == 200
    finally:
        srv.shutdown()
