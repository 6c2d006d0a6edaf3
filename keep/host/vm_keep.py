"""The loader of a VM Keep (``kvm``, ``snp``, ``tdx``): boots one QEMU VM from the Keep image
and relays the control frames between the keep manager (this process's stdin/stdout) and the
wasmldr inside the VM (a virtio-serial port, here a unix socket).  On the untrusted host.

The VM's memory comes from the Keep's limits, so the loader waits for the keep manager's
``start`` (which carries them — the host sees the create request anyway) before it boots.
The Keep's HTTPS port is forwarded to one loopback port; the provisioning answer's endpoint is
rewritten to it.  The client pins the TLS key it sealed to the Keep, so an endpoint the host
chooses can at worst lead nowhere.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import shutil
import signal
import socket
import time
from pathlib import Path

from keepbook.keep.shared import protocol, vm_image
from keepbook.keep.shared.framing import FrameReader, write_frame
from keepbook.keep.host import vm
from keepbook.keep.host.backends import make_keep_scratch
from keepbook.keep.host.keepldr import announce_exit, log, pump, stdio_frames

CONSOLE_LINES = 40
ACCEPT_TIMEOUT_S = 15.0


def _die_with_loader() -> None:
    """In QEMU's child process: receive SIGKILL when this loader dies (even by kill -9)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def describe_exit(code: int | None) -> str:
    if code is None:
        return "QEMU did not exit"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"QEMU was killed by {name}"
    return "the VM powered off" if code == 0 else f"QEMU exited with code {code}"


class VmKeep:
    def __init__(self, backend: str, keep_id: str):
        self.backend = backend
        self.keep_id = keep_id
        self.proc: asyncio.subprocess.Process | None = None
        self.console: collections.deque[str] = collections.deque(maxlen=CONSOLE_LINES)
        self.scratch: str | None = None
        self.host_port = 0

    def console_tail(self, n: int = 6) -> str:
        lines = [ln for ln in self.console if ln.strip()][-n:]
        return " | ".join(lines) if lines else "(no console output)"

    async def _read_console(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.console.append(line.decode(errors="replace").rstrip()[:300])

    async def boot(self, limits: dict) -> tuple[FrameReader, asyncio.StreamWriter, str]:
        """Start QEMU, take its control connection, wait for the wasmldr's "booted".
        Returns the control streams and a note on how the VM runs."""
        qemu = vm.find_qemu()
        image = vm.load_image()
        accel = vm.choose_accel(qemu, image) if self.backend == "kvm" else vm.Accel("kvm", "confidential VM")
        self.scratch = make_keep_scratch(self.keep_id)
        sock_path = Path(self.scratch) / "control.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(sock_path))
        listener.listen(1)
        listener.setblocking(False)
        self.host_port = _free_port()
        launch = vm.Launch(image=image, backend=self.backend, memory_mib=vm.guest_memory_mib(limits),
                           control_socket=sock_path, host_port=self.host_port)
        cmd = vm.command(qemu, launch, accel)
        note = (f"QEMU VM from Keep image {image.digest[:16]}…, {launch.memory_mib} MiB, "
                f"{accel.describe()}")
        log(self.keep_id, "vm-starting", backend=self.backend, accel=accel.name,
            memory_mib=launch.memory_mib, image=image.digest, port=self.host_port)
        t0 = time.monotonic()
        self.proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, preexec_fn=_die_with_loader)
        asyncio.create_task(self._read_console())
        loop = asyncio.get_running_loop()
        try:
            conn, _ = await self._until_qemu_exits(loop.sock_accept(listener), ACCEPT_TIMEOUT_S,
                                                   "connect its control port")
        finally:
            listener.close()
        conn.setblocking(False)
        reader, writer = await asyncio.open_unix_connection(sock=conn, limit=2**16)
        frames = FrameReader(reader)
        first = await self._until_qemu_exits(frames.read(), vm_image.VM_BOOT_TIMEOUT_S,
                                             "boot the Keep")
        if not (isinstance(first, protocol.Lifecycle) and first.event == "booted"):
            raise vm.VmUnavailable(f"the Keep VM sent {getattr(first, 'MSG', 'nothing')!r} "
                                   f"instead of booting; console: {self.console_tail()}")
        log(self.keep_id, "vm-booted", boot_s=round(time.monotonic() - t0, 2), accel=accel.name)
        return frames, writer, note

    async def _until_qemu_exits(self, aw, timeout: float, doing: str):
        """``aw``'s result, or a clear error if QEMU exits or ``timeout`` passes first."""
        assert self.proc is not None
        task = asyncio.ensure_future(aw)
        exited = asyncio.ensure_future(self.proc.wait())
        done, _ = await asyncio.wait({task, exited}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            exited.cancel()
            return task.result()
        task.cancel()
        exited.cancel()
        if self.proc.returncode is not None:
            await asyncio.sleep(0.1)  # let the console reader take QEMU's last words
            raise vm.VmUnavailable(f"{describe_exit(self.proc.returncode)} before it could "
                                   f"{doing}: {self.console_tail()}")
        raise vm.VmUnavailable(f"the Keep VM did not {doing} within {timeout:.0f} s; "
                               f"console: {self.console_tail()}")

    def rewrite(self, msg: protocol.Message) -> protocol.Message:
        """Point the client at the forwarded port (the guest only knows its own address)."""
        if isinstance(msg, protocol.ProvisionResponse):
            msg.endpoint = f"https://127.0.0.1:{self.host_port}"
        return msg

    async def stop(self) -> str:
        """Wait briefly for the VM to power off after its wasmldr ended, else kill it."""
        code = None
        if self.proc is not None:
            try:
                code = await asyncio.wait_for(self.proc.wait(), 2)
            except asyncio.TimeoutError:
                self.proc.kill()
                code = await self.proc.wait()
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)
        return describe_exit(code)


async def serve_vm(backend: str, keep_id: str) -> int:
    started = await read_start()
    if started is None:
        return 0
    up_frames, up_writer, start, limits = started
    keep = VmKeep(backend, keep_id)
    try:
        down_frames, down_writer, note = await keep.boot(limits)
    except Exception as exc:  # noqa: BLE001 - every failure to boot is reported, none crashes
        reason = (str(exc) if isinstance(exc, (vm.VmUnavailable, OSError))
                  else f"the VM loader failed ({type(exc).__name__})")
        log(keep_id, "vm-failed", reason=reason[:500])
        write_frame(up_writer, protocol.ErrorBody(status=503, reason=f"the {backend} Keep could "
                                                  f"not start: {reason}"))
        await up_writer.drain()
        await announce_exit(keep_id, up_writer, f"{await keep.stop()}: {reason[:300]}")
        return 0
    write_frame(up_writer, protocol.Lifecycle(event="booted", detail=note))
    write_frame(down_writer, start)
    await down_writer.drain()
    await pump(keep_id, up_frames, up_writer, down_frames, down_writer, rewrite=keep.rewrite)
    how = await keep.stop()
    log(keep_id, "vm-exited", how=how)
    await announce_exit(keep_id, up_writer, how)
    return 0


async def read_start() -> tuple[FrameReader, asyncio.StreamWriter, protocol.Start, dict] | None:
    """The keep manager's frames on stdio, its ``start`` and the Keep's limits in it — what a
    loader that sizes its Keep (a VM, a pod) waits for before it starts anything.  None: there
    is none (the manager went away, or the limits are unusable: it was told why)."""
    up_reader, up_writer = await stdio_frames()
    up_frames = FrameReader(up_reader)
    start = await _first_start(up_frames, up_writer)
    if start is None:
        return None
    try:
        limits = protocol.loads(start.config, max_bytes=protocol.MAX_CONTROL_BYTES)["limits"]
        protocol.check_limits("start.config", limits)
    except (protocol.ProtocolError, KeyError, TypeError) as exc:
        write_frame(up_writer, protocol.ErrorBody(status=400, reason=f"start: the Keep's limits "
                                                  f"are unusable ({getattr(exc, 'reason', exc)})"))
        await up_writer.drain()
        return None
    return up_frames, up_writer, start, limits


async def _first_start(up_frames: FrameReader,
                       up_writer: asyncio.StreamWriter) -> protocol.Start | None:
    """The keep manager's ``start`` (anything before it is refused: nothing runs yet)."""
    while True:
        try:
            msg = await up_frames.read()
        except protocol.ProtocolError as exc:
            write_frame(up_writer, protocol.ErrorBody(status=exc.status, reason=exc.reason))
            await up_writer.drain()
            if exc.status == 413:
                return None
            continue
        if msg is None or isinstance(msg, protocol.Start):
            return msg
        write_frame(up_writer, protocol.ErrorBody(status=409, reason=f"{msg.MSG!r} before start: "
                                                  "this Keep (a VM or a pod) has not booted yet"))
        await up_writer.drain()
