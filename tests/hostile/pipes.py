"""A real wasmldr process driven through its control pipe (stdin/stdout frames), as keepldr
drives it — for fuzzing what the host can send into a Keep."""

from __future__ import annotations

import os
import random
import select
import struct
import subprocess
import sys
import time

from keepbook.keep.shared import protocol as p
from tests.hostile import mutations as mu


class PipeKeep:
    def __init__(self, backend: str = "nil"):
        import os
        import tempfile

        # the Keep's private files go to a directory this harness removes (as keepldr would)
        self.scratch = tempfile.mkdtemp(prefix="keepbook-test-keep-")
        env = {**os.environ, "KEEPBOOK_KEEP_DIR": self.scratch}
        self.proc = subprocess.Popen([sys.executable, "-m", "keepbook.keep.inside", "--backend", backend],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True,
                                     env=env)
        self._buf = b""
        booted = self.read(timeout=30)
        assert isinstance(booted, p.Lifecycle) and booted.event == "booted", booted

    def send_raw(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, body: bytes) -> None:
        self.send_raw(struct.pack(">I", len(body)) + body)

    def read(self, timeout: float = 5.0) -> p.Message | None:
        """The next frame from the Keep; None at end of stream; TimeoutError if it hangs."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        while True:
            if len(self._buf) >= 4:
                (n,) = struct.unpack(">I", self._buf[:4])
                if len(self._buf) >= 4 + n:
                    body, self._buf = self._buf[4:4 + n], self._buf[4 + n:]
                    return p.decode_any(body)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the Keep did not answer on its control pipe")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None
                self._buf += chunk

    def answer(self, timeout: float = 5.0) -> p.Message | None:
        """The next non-lifecycle frame."""
        while True:
            msg = self.read(timeout)
            if not isinstance(msg, (p.Lifecycle, p.DebugLog)):
                return msg

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # type: ignore[union-attr]
                self.proc.wait(3)
            except (subprocess.TimeoutExpired, OSError):
                self.proc.kill()
                self.proc.wait()
        import shutil

        shutil.rmtree(self.scratch, ignore_errors=True)


def pipe_message(rng: random.Random) -> bytes:
    """A well-formed frame body (so the Keep stays up) whose content is wrong for the moment or
    for the Keep: wrong message types, a start with a broken or hostile config, out-of-order
    attest/provision, random sealed blobs."""
    names = sorted(mu.templates())
    pick = rng.random()
    if pick < 0.35:
        cfg = dict(mu.CONFIG)
        r = rng.random()
        if r < 0.3:
            config = mu.mutate(rng, cfg)
        elif r < 0.5:
            config = rng.randbytes(rng.randrange(64))
        else:
            cfg[rng.choice(list(cfg))] = mu._weird_value(rng)
            try:
                config = p.dumps(cfg)
            except Exception:
                config = b"\xa0"
        return p.Start(keep_id=rng.choice(["k", "x" * 64, "é"]), config=config[:512 * 1024]).to_cbor()
    if pick < 0.55:
        return p.AttestRequest(nonce=rng.randbytes(rng.choice([32, 48, 64]))).to_cbor()
    if pick < 0.7:
        return p.ProvisionRequest(sealed=rng.randbytes(rng.randrange(32, 600))).to_cbor()
    for _ in range(8):
        body = mu.mutate(rng, mu.templates()[rng.choice(names)]) if rng.random() < 0.7 \
            else p.dumps(mu.templates()[rng.choice(names)])
        try:
            p.decode_any(body)
            return body
        except p.ProtocolError:
            continue
    return p.Event(kind="notice", content={}).to_cbor()
