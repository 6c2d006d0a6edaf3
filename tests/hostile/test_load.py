"""Load: N kernels at once (real jupyter kernels), each creating its own Keep through one keep
manager shared by two users, each setting a random secret in its Keep's Python session and
/tmp; then each looks for the others' secrets.  All cells must succeed, every kernel must see
exactly its own secret, and no secret may appear in anything the host can read.

N=3 in `make test`; N=20 under `make stress` (KEEPBOOK_STRESS=1)."""

from __future__ import annotations

import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import Manager
from tests.hostile.report import STRESS, record
from tests.kernel.kernel_client import Kernel

SET = ("secret = {s!r}\n"
       "open('/tmp/secret', 'w').write(secret)\n"
       "print('set', secret)")
LOOK = ("import os\n"
        "print('mine', repr(globals().get('secret')), "
        "repr(open('/tmp/secret').read() if os.path.exists('/tmp/secret') else None))\n"
        "print('files', sorted(os.listdir('/tmp')))")


def _scenario(n: int, tmp_path) -> None:
    tokens = [tmp_path / "alice.token", tmp_path / "bob.token"]
    tokens[0].write_text("alice-" + secrets.token_hex(16) + "\n")
    tokens[1].write_text("bob-" + secrets.token_hex(16) + "\n")
    (tmp_path / "mgr").mkdir()
    m = Manager(tmp_path / "mgr", backends="nil,sim-snp",
                extra=[a for t in tokens for a in ("--token-file", str(t))])
    values = [secrets.token_hex(16) for _ in range(n)]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=min(n, 8)) as pool:
        kernels = list(pool.map(lambda _: Kernel(), range(n)))
    barrier = threading.Barrier(n, timeout=600)
    outcome: dict[int, dict] = {}

    def session(i: int) -> None:
        k = kernels[i]
        backend = "sim-snp" if i % 2 else "nil"
        res = k.execute(f"%keep new --backend {backend} --manager {m.url} --token-file {tokens[i % 2]}",
                        timeout=300)
        assert res.status == "ok", res.text()
        res = k.execute(SET.format(s=values[i]), timeout=600)
        assert res.status == "ok" and f"set {values[i]}" in res.stream("stdout"), res.text()
        barrier.wait()
        look = k.execute(LOOK, timeout=300)
        assert look.status == "ok", look.text()
        outcome[i] = {"text": look.text()}

    errors: list[BaseException] = []
    try:
        threads = [threading.Thread(target=lambda i=i: _run(session, i, errors, barrier)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(900)
        assert not errors, errors[0]
        leaks = 0
        for i, out in outcome.items():
            text = out["text"]
            assert f"mine {values[i]!r} {values[i]!r}" in text, text
            others = [v for j, v in enumerate(values) if j != i and v in text]
            leaks += len(others)
        host = m.host_visible_text()
        host_leaks = [v for v in values if v in host]
        record("load", f"{n} concurrent kernels", ok=len(outcome) == n, kernels=n,
               seconds=round(time.monotonic() - started, 1))
        record("leak", f"cross-Keep secrets ({n} kernels)", ok=leaks == 0, found=leaks)
        record("leak", f"secrets in host-visible files ({n} kernels)", ok=not host_leaks,
               found=len(host_leaks))
        assert len(outcome) == n
        assert leaks == 0, "a secret set in one Keep was visible in another"
        assert not host_leaks, "a secret reached the host's logs"
    finally:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda k: k.close(), kernels))
        m.stop()


def _run(fn, i, errors, barrier) -> None:
    try:
        fn(i)
    except BaseException as exc:  # noqa: BLE001 - reported by the main thread
        errors.append(exc)
        barrier.abort()


def test_concurrent_kernels_quick(tmp_path):
    _scenario(3, tmp_path)


@pytest.mark.stress
@pytest.mark.skipif(not STRESS, reason="stress-sized (20 kernels): runs under `make stress`")
def test_concurrent_kernels_stress(tmp_path):
    _scenario(20, tmp_path)
