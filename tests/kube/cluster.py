"""A Kubernetes cluster for tests without one: kmock's API emulator (PyPI ``kmock``) on loopback,
and a test double of the node — what a kubelet and the Service controller would do.

The double is the only fake part, and it is small: when a Keep pod appears it reports it
Pending, gives the pod's Service a loopback address of its own (127.0.N.M, as a cluster gives
a ClusterIP), starts the pod's command *as a local process* — the Keep container's
``python3 -m keepbook.keep.inside.pod …``, with this Python and ``--listen`` that address,
since no container can run here — and reports the pod Running once it listens.  When the pod
is deleted it kills the process.  Scenarios make it fail instead: an image that cannot be
pulled, an eviction after the pod ran, or a quota that the API server enforces at create.
Everything the launcher does goes through the emulator's HTTP API, as against a cluster.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import kmock

PODS = kmock.resource("v1/pods")
SERVICES = kmock.resource("v1/services")
NETPOLS = kmock.resource("networking.k8s.io/v1/networkpolicies")
RUNTIMECLASSES = kmock.resource("node.k8s.io/v1/runtimeclasses")
QUOTA_MESSAGE = ('pods "{name}" is forbidden: exceeded quota: keepbook-quota, requested: '
                 'limits.memory=1280Mi, used: limits.memory=3Gi, limited: limits.memory=4Gi')


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator, plus the one admission rule a test needs — a ResourceQuota that refuses
    pods (403 Forbidden, the API server's own message form) before anything is stored — and the
    API server's reading of ``watch=True`` (kubernetes_asyncio's spelling)."""

    refuse_pods: bool = False

    async def _handle(self, request):  # type: ignore[override]
        if request.action == kmock.action.LIST and request.params.get("watch") in ("True", "1"):
            # the API server parses booleans as Go does ("True" too); kmock knows only "true"
            watch = attrs.evolve(request, action=kmock.action.WATCH)
            self._requests[self._requests.index(request)] = watch  # as logged, so it matches
            request = watch
        if (self.refuse_pods and request.resource == PODS
                and request.action == kmock.action.CREATE):
            name = (request.data or {}).get("metadata", {}).get("name", "?")
            raise kmock.KubernetesError(status=403, reason="Forbidden",
                                        message=QUOTA_MESSAGE.format(name=name))
        return await super()._handle(request)


class FakeCluster:
    """Start with :meth:`start`, stop with :meth:`stop`.  ``scenario``: ``run`` (the pod runs),
    ``image-pull`` (ErrImagePull), ``evict`` (runs, then is evicted when :meth:`evict` is
    called), ``quota`` (the API refuses the pod)."""

    def __init__(self, tmp: Path, scenario: str = "run",
                 runtime_classes: tuple[str, ...] = ("kata-qemu-coco-dev",)):
        self.tmp = tmp
        self.scenario = scenario
        self.runtime_classes = runtime_classes
        self.kubeconfig = tmp / "kubeconfig"
        self.url = ""
        self.k: Emulator | None = None
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.seen: dict[str, list[str]] = {}   # pod → what the double did with it, in order
        self.seen_address: dict[str, tuple[str, int]] = {}
        self._addresses = (f"127.0.{a}.{b}" for a in itertools.count(77) for b in range(2, 250))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "FakeCluster":
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the Kubernetes API mock did not start")
        return self

    def stop(self) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def call(self, fn, *args):
        """Run ``fn(*args)`` in the mock's loop (its objects are not thread-safe)."""
        async def run():
            return fn(*args)
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with Emulator(refuse_pods=self.scenario == "quota") as k, kmock.Server(k) as server:
            self.k = k
            self.url = str(server.url).rstrip("/")
            for rc in self.runtime_classes:
                k.objects[RUNTIMECLASSES, None, rc] = {
                    "apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
                    "metadata": {"name": rc}, "handler": rc}
            self._write_kubeconfig()
            self._ready.set()
            async with aiohttp.ClientSession(base_url=self.url) as http:
                self.http = http
                while not self._stop.is_set():
                    await self._tick()
                    try:
                        await asyncio.wait_for(self._stop.wait(), 0.05)
                    except asyncio.TimeoutError:
                        pass
            for proc in self.procs.values():
                _kill(proc)

    def _write_kubeconfig(self) -> None:
        self.kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "mock",
            "clusters": [{"name": "mock", "cluster": {"server": self.url}}],
            "users": [{"name": "keepmgr", "user": {"token": "mock-token"}}],
            "contexts": [{"name": "mock", "context": {"cluster": "mock", "user": "keepmgr",
                                                       "namespace": "keepbook"}}]}))

    # ------------------------------------------------------------------ the node's double
    async def _patch(self, path: str, body: dict[str, Any]) -> None:
        async with self.http.patch(path, json=body, headers={
                "Content-Type": "application/merge-patch+json"}) as resp:
            assert resp.status < 300, (path, resp.status, await resp.text())

    async def _tick(self) -> None:
        assert self.k is not None
        for (res, ns, name), obj in list(self.k.objects.items()):
            if res != PODS:
                continue
            if obj.deleted:
                if name in self.procs and "deleted" not in self.seen[name]:
                    self.seen[name].append("deleted")
                    _kill(self.procs[name])
                continue
            if name not in self.seen:
                self.seen[name] = ["created"]
                await self._schedule(ns, name, obj.raw)
            elif name in self.procs and self.seen[name][-1] == "pending":
                if await _listening(self.seen_address[name]):
                    await self._set_status(ns, name, "Running", running=True)
                    self.seen[name].append("running")
            elif name in self.procs and self.procs[name].returncode is not None \
                    and self.seen[name][-1] == "running":
                await self._set_status(ns, name, "Succeeded", terminated=self.procs[name].returncode)
                self.seen[name].append("exited")

    async def _set_status(self, ns: str, name: str, phase: str, *, running: bool = False,
                          waiting: tuple[str, str] | None = None,
                          terminated: int | None = None, reason: str = "",
                          message: str = "") -> None:
        state: dict[str, Any] = {"waiting": {"reason": "ContainerCreating"}}
        if running:
            state = {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
        if waiting:
            state = {"waiting": {"reason": waiting[0], "message": waiting[1]}}
        if terminated is not None:
            state = {"terminated": {"exitCode": terminated, "reason": "Completed"}}
        status: dict[str, Any] = {"phase": phase, "containerStatuses": [
            {"name": "keep", "ready": running, "state": state, "image": "", "imageID": "",
             "restartCount": 0}]}
        if reason:
            status.update(reason=reason, message=message)
        await self._patch(f"/api/v1/namespaces/{ns}/pods/{name}/status", {"status": status})

    async def _schedule(self, ns: str, name: str, pod: dict[str, Any]) -> None:
        await self._set_status(ns, name, "Pending")
        self.seen[name].append("pending-reported")
        if self.scenario == "image-pull":
            image = pod["spec"]["containers"][0]["image"]
            await self._set_status(ns, name, "Pending", waiting=(
                "ErrImagePull", f'rpc error: code = NotFound desc = failed to pull and unpack '
                                f'image "{image}": not found'))
            self.seen[name].append("image-pull-failed")
            return
        address = next(self._addresses)
        await self._patch(f"/api/v1/namespaces/{ns}/services/{name}",
                          {"spec": {"clusterIP": address}})
        command = list(pod["spec"]["containers"][0]["command"])
        control = int(command[command.index("--control-port") + 1])
        self.seen_address[name] = (address, control)
        # the container's command, run here: this Python instead of the image's, on the
        # Service's (loopback) address instead of the pod's
        self.procs[name] = await asyncio.create_subprocess_exec(
            sys.executable, *command[1:], "--listen", address, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True)
        self.seen[name].append("pending")

    def evict(self, name: str) -> None:
        """The node evicts the pod (low memory): it fails, and its process is killed."""
        async def run() -> None:
            ns = "keepbook"
            await self._set_status(ns, name, "Failed", reason="Evicted",
                                   message="The node was low on resource: memory. Threshold "
                                           "quantity: 100Mi, available: 80Mi.")
            self.seen[name].append("evicted")
            _kill(self.procs[name])
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    # ------------------------------------------------------------------ for assertions
    def history(self, resource, name: str, ns: str = "keepbook") -> list[dict | None]:
        """Every version the API server stored of one object (None: deleted)."""
        def read():
            assert self.k is not None
            obj = next((o for key, o in self.k.objects.items() if key == (resource, ns, name)),
                       None)
            return [] if obj is None else [None if v is None else json.loads(json.dumps(v.raw))
                                           for v in obj.history]
        return self.call(read)

    def names(self, resource, ns: str = "keepbook") -> list[str]:
        def read():
            assert self.k is not None
            return sorted(n for (r, s, n), o in self.k.objects.items()
                          if r == resource and s == ns and not o.deleted)
        return self.call(read)

    def requests(self) -> list[tuple[str, str]]:
        """(method, path?query) of every request the API server answered, in order."""
        def read():
            assert self.k is not None
            return [(r.method.upper(), str(r.url.path_qs) if hasattr(r.url, "path_qs")
                     else str(r.url)) for r in self.k]
        return self.call(read)


async def _listening(address: tuple[str, int]) -> bool:
    """Does the Keep listen yet?  (Checked without connecting: a connection would be the
    Keep's one control connection.)"""
    host, port = address
    try:
        with open("/proc/net/tcp") as fh:
            rows = fh.read().splitlines()[1:]
    except OSError:
        return False
    want = f"{socket.inet_aton(host)[::-1].hex().upper()}:{port:04X}"
    return any(r.split()[1] == want and r.split()[3] == "0A" for r in rows)


def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
