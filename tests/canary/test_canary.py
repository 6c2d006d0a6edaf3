"""Canary: a random secret printed, returned, raised, released, crashed with and uploaded must
appear nowhere the host can see in `staging` and `production` — keepmgr/keepldr stdout and
stderr, their log files, any file they write (the whole state dir), and every byte they relay
(recorded by a relaying proxy in front of the keep manager).  In `debug` the same cells DO put
the secret in the host's log, which proves this test can see a leak when there is one.

What is host-visible is listed in docs/host-visibility.md; this test is its proof."""

from __future__ import annotations

import secrets

import pytest
import wasmtime

from keepbook.kernel.agent import ClientAgent, NewKeep
from tests.conftest import Manager
from tests.support.tamper import TamperingManager


def wasm_printing_then_trapping(secret: str) -> bytes:
    text = secret + "\\n"
    n = len(secret) + 1
    return bytes(wasmtime.wat2wasm(f'''(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "{text}")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const {n}))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (drop (call $w (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
    unreachable))'''))


def cells(secret: str) -> list[tuple[str, dict]]:
    return [
        ("python", {"code": f"SECRET = {secret!r}\nprint('the secret is', SECRET)"}),
        ("python", {"code": "import sys; print(SECRET, file=sys.stderr); SECRET"}),
        ("python", {"code": "display({'s': SECRET})\nimport keep\nkeep.release(SECRET, note=SECRET)"}),
        ("python", {"code": "raise RuntimeError('failed with ' + SECRET)"}),
        ("python", {"code": "class Leak(Exception): pass\nraise Leak(SECRET)"}),
        ("python", {"code": "def f(n): return f(n + 1)\nprint(SECRET)\nf(0)"}),
        ("python", {"code": "print(SECRET, flush=True)\nimport os\nos._exit(3)"}),
        ("python", {"code": f"exit({secret!r})"}),
        ("wasm", {"module": wasm_printing_then_trapping(secret)}),
    ]


def exercise(tmp_path, profile: str) -> tuple[str, str, bytes, list]:
    """Run every canary cell in a fresh Keep of ``profile``; return (secret, host files text,
    relayed bytes, events the notebook got)."""
    secret = "canary-" + secrets.token_hex(16)
    (tmp_path / "host").mkdir()
    mgr = Manager(tmp_path / "host")
    proxy = TamperingManager(mgr.url)
    tf = tmp_path / "token"
    tf.write_text(mgr.token)
    agent = ClientAgent()
    events: list = []
    try:
        agent.call(agent.new_keep(NewKeep(backend="sim-snp", profile=profile, manager=proxy.url,
                                          token_file=str(tf))))
        for kind, kw in cells(secret):
            agent.call(agent.run(kind, events.append, **kw), timeout=120)
        data = tmp_path / "data.csv"
        data.write_text(f"id,secret\n1,{secret}\n")
        agent.call(agent.upload(str(data), "canary.csv",
                                owner_key=str(_owner_key(tmp_path))), timeout=60)
        agent.call(agent.run("python", events.append,
                             code="print(open('/data/canary.csv').read())"), timeout=60)
        agent.call(agent.audit(), timeout=60)
    finally:
        agent.stop()
        proxy.close()
        mgr.stop()
    relayed = b"".join(proxy.relayed)
    return secret, mgr.host_visible_text(), relayed, events


def _owner_key(tmp_path):
    from keepbook.kernel.dataset_sealer import new_owner_key_pem

    p = tmp_path / "owner.pem"
    p.write_bytes(new_owner_key_pem())
    return p


def _forms(secret: str) -> list[bytes]:
    raw = secret.encode()
    return [raw, raw.hex().encode(), secret[7:].encode()]  # as text, hex, and the random part alone


@pytest.mark.parametrize("profile", ["staging", "production"])
def test_secret_never_reaches_the_host(tmp_path, profile):
    secret, host_text, relayed, events = exercise(tmp_path, profile)
    assert host_text, "the host wrote nothing at all: the test would see no leak"
    assert "keep-lifecycle" in host_text or "lifecycle" in host_text
    for form in _forms(secret):
        assert form.decode() not in host_text, f"{profile}: the secret is in a host file"
        assert form not in relayed, f"{profile}: the secret is in bytes the host relayed"
    seen = repr([e.content for e in events])
    if profile == "staging":  # the notebook (over the attested channel) does get it
        assert secret in seen
    else:  # production: only the explicit release, nothing else
        released = [e for e in events if e.kind == "display_data"]
        assert [e.content["data"]["text/plain"] for e in released] == [secret]
        others = [e.content for e in events if e.kind != "display_data"]
        assert secret not in repr(others)


def test_debug_profile_does_leak_to_the_host_log(tmp_path):
    """Shows the test is able to see a leak: in debug the Keep logs details to the host."""
    secret, host_text, _relayed, _events = exercise(tmp_path, "debug")
    assert secret in host_text
