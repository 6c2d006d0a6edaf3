"""keepldr: one per Keep, on the untrusted host.  Starts the Keep's wasmldr and relays frames.

It sees only what the protocol lets the host see: the create request, the nonce, evidence,
sealed (encrypted) provisioning, and lifecycle events.  It logs lifecycle events only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any, Callable

from keepbook.keep.host.backends import SCRATCH_ENV, env_for_wasmldr, make_keep_scratch

if TYPE_CHECKING:
    import asyncio

    from keepbook.keep.shared.framing import FrameReader

# asyncio and the protocol are imported after the wasmldr is started (see main): the Keep's boot
# — a CPU-bound Python import — then overlaps this loader's own, on a cold start.


def log(keep_id: str, event: str, **detail: object) -> None:
    """Lifecycle log line on stderr (the host's log).  Never cell content."""
    sys.stderr.write(json.dumps({"t": round(time.time(), 3), "component": "keepldr",
                                 "keep": keep_id, "event": event, **detail}) + "\n")
    sys.stderr.flush()


def wasmldr_command(backend: str, launcher: str, keep_id: str) -> list[str]:
    cmd = [sys.executable, "-m", "keepbook.keep.inside", "--backend", backend]
    if launcher == "systemd-run":
        # As in Enarx: each Keep in its own transient unit, so the host's service manager
        # accounts for and can stop it.
        return ["systemd-run", "--user", "--quiet", "--pipe", "--collect",
                f"--unit=keepbook-keep-{keep_id}"] + cmd
    return cmd


#: set in a pooled Keep's environment: it may warm its engines before it reports "booted"
PREWARM_ENV = "KEEPBOOK_KEEP_PREWARM"


def start_wasmldr(backend: str, keep_id: str, launcher: str,
                  prewarm: bool = False) -> subprocess.Popen:
    env = env_for_wasmldr()
    env[SCRATCH_ENV] = make_keep_scratch(keep_id)
    if prewarm:
        env[PREWARM_ENV] = "1"
    proc = subprocess.Popen(wasmldr_command(backend, launcher, keep_id), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=None, env=env, start_new_session=True)
    proc.keep_scratch = env[SCRATCH_ENV]  # type: ignore[attr-defined]
    return proc


def _remove_scratch(proc: subprocess.Popen) -> None:
    """The Keep is gone: remove its private directory, whatever way it ended."""
    import shutil

    path = getattr(proc, "keep_scratch", None)
    if path:
        shutil.rmtree(path, ignore_errors=True)


async def stdio_frames() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """The keep manager's side: frames on this loader's stdin and stdout."""
    import asyncio

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**16)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    transport, proto = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin,
                                                     sys.stdout.buffer)
    return reader, asyncio.StreamWriter(transport, proto, None, loop)


async def pump(keep_id: str, up_frames: "FrameReader", up_writer: "asyncio.StreamWriter",
               down_frames: "FrameReader", down_writer: "asyncio.StreamWriter",
               rewrite: Callable[[Any], Any] | None = None) -> None:
    """Relay frames keepmgr ⇄ Keep until the Keep closes its side.  ``rewrite`` may change
    what goes up (a VM's loader puts its forwarded endpoint into the provisioning answer).
    The readers may have been read from already (a VM's loader reads the start first)."""
    import asyncio

    from keepbook.keep.shared import protocol
    from keepbook.keep.shared.framing import write_frame

    async def downstream() -> None:  # keepmgr → wasmldr
        while True:
            try:
                msg = await up_frames.read()
            except protocol.ProtocolError as exc:
                # Tell the manager at once instead of leaving it waiting for a reply.  A bad
                # body leaves the framing intact; a bad header (413) does not, so stop there.
                log(keep_id, "protocol-error", reason=exc.reason)
                write_frame(up_writer, protocol.ErrorBody.of(exc.status, exc.reason))
                await up_writer.drain()
                if exc.status == 413:
                    break
                continue
            if msg is None:
                break
            log(keep_id, "relay-down", msg=msg.MSG)
            write_frame(down_writer, msg)
            await down_writer.drain()
        down_writer.close()

    async def upstream() -> None:  # wasmldr → keepmgr
        while True:
            msg = await down_frames.read()
            if msg is None:
                break
            if isinstance(msg, protocol.Lifecycle):
                log(keep_id, "lifecycle", keep_event=msg.event)
            elif isinstance(msg, protocol.DebugLog):
                # Only a debug-profile Keep sends these: it chose to tell the host.
                log(keep_id, "debug-log", text=msg.text)
            else:
                log(keep_id, "relay-up", msg=msg.MSG)
            write_frame(up_writer, rewrite(msg) if rewrite else msg)
            await up_writer.drain()

    down = asyncio.create_task(downstream())
    up = asyncio.create_task(upstream())
    try:
        await up  # ends when the Keep closes its side (exit or crash)
    except (protocol.ProtocolError, ConnectionError) as exc:
        log(keep_id, "protocol-error", reason=getattr(exc, "reason", None) or str(exc))
    finally:
        down.cancel()


async def announce_exit(keep_id: str, up_writer: "asyncio.StreamWriter", detail: str) -> None:
    """The Keep is gone: say so to the keep manager (it marks the Keep failed with this)."""
    from keepbook.keep.shared import protocol
    from keepbook.keep.shared.framing import write_frame

    try:
        write_frame(up_writer, protocol.Lifecycle(event="exited", detail=detail))
        await up_writer.drain()
    except (ConnectionError, RuntimeError):
        pass


async def relay(backend: str, keep_id: str, launcher: str,
                child: subprocess.Popen | None = None) -> int:
    import asyncio

    up_reader, up_writer = await stdio_frames()
    proc = child or start_wasmldr(backend, keep_id, launcher)
    log(keep_id, "wasmldr-started", pid=proc.pid, backend=backend)
    assert proc.stdin and proc.stdout
    loop = asyncio.get_running_loop()
    down_reader = asyncio.StreamReader(limit=2**16)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(down_reader), proc.stdout)
    d_transport, d_protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin,
                                                            proc.stdin)
    down_writer = asyncio.StreamWriter(d_transport, d_protocol, None, loop)
    from keepbook.keep.shared.framing import FrameReader

    await pump(keep_id, FrameReader(up_reader), up_writer, FrameReader(down_reader), down_writer)
    try:
        rc = await asyncio.wait_for(asyncio.to_thread(proc.wait), 2)
    except asyncio.TimeoutError:
        proc.kill()
        rc = await asyncio.to_thread(proc.wait)
    log(keep_id, "wasmldr-exited", code=rc)
    _remove_scratch(proc)
    await announce_exit(keep_id, up_writer, f"wasmldr exit code {rc}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="keepldr", description=__doc__)
    ap.add_argument("--backend", required=True)
    ap.add_argument("--keep-id", required=True)
    ap.add_argument("--launcher", choices=("subprocess", "systemd-run", "kubernetes"),
                    default="subprocess")
    ap.add_argument("--prewarm", action="store_true",
                    help="a pooled Keep: let the wasmldr warm up before it reports booted")
    kube = ap.add_argument_group("kubernetes launcher (a coco-* Keep is a pod)")
    kube.add_argument("--namespace", default="default")
    kube.add_argument("--runtime-class", default="")
    kube.add_argument("--keep-image", default="", help="REPOSITORY@sha256:… of the Keep container")
    kube.add_argument("--kubeconfig", default=None)
    kube.add_argument("--user", default="", help="the Keep's user (a label on its pod)")
    args = ap.parse_args(argv)
    if args.launcher == "kubernetes":  # the Keep is a pod (keep/host/pod_launch.py)
        import asyncio

        from keepbook.keep.host.pod_launch import KubeSettings, serve_pod
        from keepbook.keep.shared.pod_keep import ImageRef

        settings = KubeSettings(namespace=args.namespace, runtime_class=args.runtime_class,
                                image=ImageRef.parse(args.keep_image), kubeconfig=args.kubeconfig)
        try:
            return asyncio.run(serve_pod(args.backend, args.keep_id, settings, args.user))
        except KeyboardInterrupt:
            return 130
    from keepbook.keep.shared.facts import VM_BACKENDS  # (light: no asyncio, no protocol)

    if args.backend in VM_BACKENDS:  # the Keep is its own VM (keep/host/vm_keep.py)
        import asyncio

        from keepbook.keep.host.vm_keep import serve_vm

        try:
            return asyncio.run(serve_vm(args.backend, args.keep_id))
        except KeyboardInterrupt:
            return 130
    child = start_wasmldr(args.backend, args.keep_id, args.launcher, args.prewarm)  # first
    import asyncio

    try:
        return asyncio.run(relay(args.backend, args.keep_id, args.launcher, child))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
