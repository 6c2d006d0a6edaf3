"""The Keep container's entry point — inside the Keep (a Confidential Containers pod).

A pod has no pipe to its keepldr: the control frames come over one TCP connection to the
control port (the host's launcher connects through the pod's Service, as a VM Keep's come over
its virtio-serial port).  This accepts exactly one connection — a second, or anything before it,
is refused: whoever connects first is the Keep's only host — and then runs the wasmldr
unchanged with that connection as its control pipe; its attested channel listens on the channel
port.  The Keep ends when the connection closes, as it does when its keepldr's pipe closes.

    python3 -m keepbook.keep.inside.pod --backend coco-snp --control-port 8444 --channel-port 8443
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

from keepbook.keep.shared import pod_keep

LISTEN_ENV, PORT_ENV = "KEEPBOOK_KEEP_LISTEN", "KEEPBOOK_KEEP_PORT"  # read by server.py


def accept_control(listen: str, port: int) -> socket.socket:
    """The one control connection (the listening socket is closed at once: no second)."""
    with socket.create_server((listen, port), backlog=1) as server:
        conn, _ = server.accept()
    return conn


def _copy_in(conn: socket.socket, fd: int) -> None:
    try:
        while data := conn.recv(1 << 16):
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
    except OSError:
        pass
    finally:
        os.close(fd)  # the wasmldr reads the end of its control pipe: the Keep ends


def _copy_out(fd: int, conn: socket.socket) -> None:
    try:
        while data := os.read(fd, 1 << 16):
            conn.sendall(data)
    except OSError:
        pass
    finally:
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def relay_through_pipes(conn: socket.socket) -> None:
    """Make the connection the wasmldr's stdin/stdout — through pipes, as its keepldr's would
    be (asyncio's pipe transports take a socket's readability for the peer's close)."""
    import threading

    down_r, down_w = os.pipe()
    up_r, up_w = os.pipe()
    os.dup2(down_r, 0)
    os.dup2(up_w, 1)
    os.close(down_r)
    os.close(up_w)
    threading.Thread(target=_copy_in, args=(conn, down_w), daemon=True).start()
    threading.Thread(target=_copy_out, args=(up_r, conn), daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="keepbook-keep-pod", description=__doc__)
    ap.add_argument("--backend", required=True)
    ap.add_argument("--control-port", type=int, default=pod_keep.CONTROL_PORT)
    ap.add_argument("--channel-port", type=int, default=pod_keep.CHANNEL_PORT)
    ap.add_argument("--listen", default="0.0.0.0",
                    help="address to listen on (the pod's; a test double gives a loopback one)")
    args = ap.parse_args(argv)
    try:
        pod_keep.check_pod_backend(args.backend)
    except ValueError as exc:
        print(f"keepbook Keep pod: {exc}", file=sys.stderr)
        return 2
    conn = accept_control(args.listen, args.control_port)
    relay_through_pipes(conn)
    os.environ[LISTEN_ENV] = args.listen
    os.environ[PORT_ENV] = str(args.channel_port)
    from keepbook.keep.inside import server  # reads the listen address at import

    return server.main(["--backend", args.backend])


if __name__ == "__main__":
    sys.exit(main())
