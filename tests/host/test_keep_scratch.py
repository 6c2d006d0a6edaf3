"""A Keep's temporary files (Python session scratch, the TLS key handed to OpenSSL) live in a
private memory-backed directory that disappears with the Keep."""

from __future__ import annotations

import time
from pathlib import Path

from keepbook.kernel.agent import ClientAgent, NewKeep


def _keep_dirs(keep_id: str) -> set[Path]:
    """This Keep's directories only: other Keeps (other tests, other users of this machine) come
    and go in the same folder."""
    import tempfile
    bases = [Path("/dev/shm")] if Path("/dev/shm").is_dir() else [Path(tempfile.gettempdir())]
    return {p for b in bases for p in b.glob(f"keepbook-keep-{keep_id}-*")}


def test_scratch_is_private_memory_backed_and_removed(shared_manager, tmp_path):
    tf = tmp_path / "t"
    tf.write_text(shared_manager.token)
    agent = ClientAgent()
    try:
        session = agent.call(agent.new_keep(NewKeep(backend="nil", manager=shared_manager.url,
                                                    token_file=str(tf))))
        out = []
        status = agent.call(agent.run("python", out.append, code="open('/tmp/x', 'w').write('scratch')"))
        assert status["ok"], out
        mine = _keep_dirs(session.id)
        assert mine, "the Keep made no private directory"
        assert all((d.stat().st_mode & 0o077) == 0 for d in mine)
        # the guest's writable /tmp is somewhere inside the Keep's private directories
        assert any(f.name == "x" for d in mine for f in d.rglob("x"))
        agent.call(agent.close())
        deadline = time.monotonic() + 5
        while _keep_dirs(session.id) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _keep_dirs(session.id), "a Keep's private directories outlived it"
    finally:
        agent.stop()


def test_nothing_is_left_when_the_keep_is_killed(shared_manager, tmp_path):
    """kill -9 of both the Keep and its loader: the keep manager still removes the Keep's
    directory when the Keep is closed."""
    import os
    import signal

    from tests.support.procs import keep_pids

    tf = tmp_path / "t"
    tf.write_text(shared_manager.token)
    agent = ClientAgent()
    try:
        session = agent.call(agent.new_keep(NewKeep(backend="nil", manager=shared_manager.url,
                                                    token_file=str(tf))))
        assert agent.call(agent.run("python", lambda e: None, code="open('/tmp/y', 'w').write('y')"))["ok"]
        mine = _keep_dirs(session.id)
        assert mine
        keepldr, wasmldr = keep_pids(session.id)
        os.kill(wasmldr, signal.SIGKILL)
        os.kill(keepldr, signal.SIGKILL)
        agent.call(agent.close())
        deadline = time.monotonic() + 5
        while _keep_dirs(session.id) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _keep_dirs(session.id), "a killed Keep's directory outlived it"
    finally:
        agent.stop()
