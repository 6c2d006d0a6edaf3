"""The loader of a Keep that is a Kubernetes pod (``coco-snp``, ``coco-tdx``, ``coco-dev``;
``keepbook keepmgr --launcher kubernetes``).  On the untrusted host, like every keepldr: it asks
the cluster for the pod and relays the control frames; it never runs inside the pod.

As a VM Keep's loader does, it waits for the keep manager's ``start`` (the pod's memory comes
from the Keep's limits), then creates the Keep's NetworkPolicy, Service and Pod
(:mod:`.kube_objects`), watches the pod until it runs — or fails: an image that cannot be
pulled, a quota, an eviction end the Keep with the cluster's reason — connects to the Keep's
control port through the Service and relays frames with :func:`.keepldr.pump`, pointing the
provisioning answer's endpoint at the Service's channel port.  It keeps watching: a pod that
fails, is evicted or deleted later ends the Keep with that reason.  When the Keep ends (the
manager closes it, or the Keep exits) it deletes the three objects.

The client pins the TLS key it sealed to the Keep and checks the init-data digest in the
evidence, so an address or a pod the host chooses can at worst lead nowhere.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from typing import Any

from keepbook.keep.shared import pod_keep, protocol
from keepbook.keep.shared.framing import FrameReader, write_frame
from keepbook.keep.shared.vm_image import VM_BOOT_TIMEOUT_S
from keepbook.keep.host import kube_objects as objs
from keepbook.keep.host.keepldr import announce_exit, log, pump
from keepbook.keep.host.vm_keep import read_start

#: from create to the Keep's "booted" (image pull, the Kata VM's boot, Python's start): inside
#: the keep manager's wait for a start, itself inside the client's 90 s per request
START_TIMEOUT_S = VM_BOOT_TIMEOUT_S
#: how long each of the three deletions may take when the Keep ends
DELETE_TIMEOUT_S = 4.0
CONNECT_RETRY_S = 0.5


class PodFailed(RuntimeError):
    """The pod cannot be (or stopped being) the Keep; the message is the cluster's reason."""


@dataclass(frozen=True)
class KubeSettings:
    """Where and how the keep manager's Keep pods run (its --namespace, --runtime-class …)."""

    namespace: str
    runtime_class: str
    image: pod_keep.ImageRef
    kubeconfig: str | None = None


async def api_client(kubeconfig: str | None) -> Any:
    """A client for the cluster: the kubeconfig given, else the pod's service account when this
    runs in the cluster, else ``~/.kube/config``."""
    from kubernetes_asyncio import client, config

    cfg = client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=cfg)
    else:
        await config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    return client.ApiClient(configuration=cfg)


def api_reason(exc: BaseException) -> str:
    """The API server's own words for a refused request (a quota names the limit)."""
    status = getattr(exc, "status", None)
    body = getattr(exc, "body", None)
    message = ""
    if body:
        try:
            message = json.loads(body).get("message", "")
        except (ValueError, AttributeError):
            message = str(body)[:300]
    if status is None:
        return f"{type(exc).__name__}: {exc}"[:400]
    return f"the Kubernetes API answered {status} {getattr(exc, 'reason', '') or ''}".rstrip() + \
        (f": {message[:400]}" if message else "")


class PodKeep:
    """One Keep pod, from create to delete."""

    def __init__(self, spec: objs.PodSpec, api: Any):
        from kubernetes_asyncio import client

        self.spec = spec
        self.core = client.CoreV1Api(api)
        self.net = client.NetworkingV1Api(api)
        self.api = api
        self.last: dict[str, Any] | None = None
        self.address: tuple[str, int, int] | None = None
        self.ended: str | None = None   # why the pod stopped being the Keep, once it has

    async def create(self) -> None:
        ns = self.spec.namespace
        try:
            await self.net.create_namespaced_network_policy(ns, objs.network_policy(self.spec))
            await self.core.create_namespaced_service(ns, objs.service(self.spec))
            await self.core.create_namespaced_pod(ns, objs.pod(self.spec))
        except Exception as exc:  # noqa: BLE001 - the API's refusal is the Keep's reason
            raise PodFailed(f"the cluster refused the Keep's objects — {api_reason(exc)}") from None
        log(self.spec.keep_id, "pod-created", pod=self.spec.name, namespace=ns,
            runtime_class=self.spec.runtime_class, image=str(self.spec.image))

    async def events(self):
        """This pod's watch events (ADDED/MODIFIED/DELETED, object as a dict), for ever."""
        from kubernetes_asyncio import watch

        while True:
            async with watch.Watch().stream(self.core.list_namespaced_pod, self.spec.namespace,
                                            field_selector=f"metadata.name={self.spec.name}",
                                            timeout_seconds=300) as stream:
                async for ev in stream:
                    raw = ev.get("raw_object") or {}
                    if (raw.get("metadata") or {}).get("name") != self.spec.name:
                        continue  # a server that ignores the field selector
                    yield ev.get("type"), raw

    async def wait_running(self, deadline: float) -> None:
        """Until the pod runs; PodFailed with the reason if it fails or the time runs out."""
        async def watch_until_running() -> None:
            async for kind, pod in self.events():
                self.last = pod
                if kind == "DELETED":
                    raise PodFailed("the pod was deleted before it ran (not by keepbook)")
                why = objs.problem(pod)
                if why:
                    raise PodFailed(why)
                if objs.running(pod):
                    return
        try:
            await asyncio.wait_for(watch_until_running(), max(0.1, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise PodFailed(f"the pod did not run within {START_TIMEOUT_S:.0f} s "
                            f"({objs.pending_note(self.last)})") from None
        except PodFailed:
            raise
        except Exception as exc:  # noqa: BLE001
            raise PodFailed(f"lost the pod's watch — {api_reason(exc)}") from None
        log(self.spec.keep_id, "pod-running", pod=self.spec.name)

    async def connect(self, deadline: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The Keep's control connection, through its Service (which may take a moment to
        get an address, and the Keep a moment to listen)."""
        why = "the Service has no address"
        while time.monotonic() < deadline:
            try:
                svc = await self.core.read_namespaced_service(self.spec.name, self.spec.namespace,
                                                              _preload_content=False)
                self.address = objs.service_address(json.loads(await svc.read()))
                if self.address:
                    host, control, _ = self.address
                    return await asyncio.wait_for(
                        asyncio.open_connection(host, control, limit=2**16),
                        max(0.1, deadline - time.monotonic()))
            except (OSError, asyncio.TimeoutError) as exc:
                why = f"its control port does not answer ({exc.__class__.__name__})"
            except Exception as exc:  # noqa: BLE001
                why = api_reason(exc)
            await asyncio.sleep(CONNECT_RETRY_S)
        raise PodFailed(f"the pod runs, but the Keep could not be reached within "
                        f"{START_TIMEOUT_S:.0f} s: {why}")

    async def monitor(self, on_end) -> None:
        """After the start: a pod that fails, is evicted or deleted ends the Keep."""
        try:
            async for kind, pod in self.events():
                self.last = pod
                why = ("the pod was deleted (not by keepbook)" if kind == "DELETED"
                       else objs.problem(pod))
                if why:
                    self.ended = why
                    log(self.spec.keep_id, "pod-ended", reason=why[:300])
                    on_end()
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            self.ended = f"lost the pod's watch — {api_reason(exc)}"
            on_end()

    def rewrite(self, msg: protocol.Message) -> protocol.Message:
        """Point the client at the Service's channel port (the Keep only knows its own)."""
        if isinstance(msg, protocol.ProvisionResponse) and self.address:
            host, _, channel = self.address
            msg.endpoint = f"https://{host}:{channel}"
        return msg

    def note(self) -> str:
        return (f"pod {self.spec.namespace}/{self.spec.name} (runtime class "
                f"{self.spec.runtime_class}), image {self.spec.image}")

    async def delete(self) -> None:
        """Delete the pod, its Service and NetworkPolicy (each once; a missing one is fine)."""
        from kubernetes_asyncio.client import V1DeleteOptions

        ns, name = self.spec.namespace, self.spec.name
        calls = [self.core.delete_namespaced_pod(name, ns, body=V1DeleteOptions(
                     grace_period_seconds=0, propagation_policy="Background")),
                 self.core.delete_namespaced_service(name, ns),
                 self.net.delete_namespaced_network_policy(name, ns)]
        for call in calls:
            try:
                await asyncio.wait_for(call, DELETE_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - a missing object is already deleted
                if getattr(exc, "status", None) != 404:
                    log(self.spec.keep_id, "pod-delete-failed", reason=api_reason(exc)[:300])
        log(self.spec.keep_id, "pod-deleted", pod=name, namespace=ns)


async def serve_pod(backend: str, keep_id: str, settings: KubeSettings, user: str = "") -> int:
    started = await read_start()
    if started is None:
        return 0
    up_frames, up_writer, start, limits = started
    spec = objs.PodSpec(keep_id=keep_id, backend=backend, namespace=settings.namespace,
                        runtime_class=settings.runtime_class, image=settings.image,
                        memory_bytes=int(limits["memory_bytes"]), user=user)
    deadline = time.monotonic() + START_TIMEOUT_S
    api = None
    keep: PodKeep | None = None
    try:
        api = await api_client(settings.kubeconfig)
        keep = PodKeep(spec, api)
        await keep.create()
        await keep.wait_running(deadline)
        down_reader, down_writer = await keep.connect(deadline)
        down_frames = FrameReader(down_reader)
        first = await asyncio.wait_for(down_frames.read(), max(0.1, deadline - time.monotonic()))
        if not (isinstance(first, protocol.Lifecycle) and first.event == "booted"):
            raise PodFailed(f"the Keep pod sent {getattr(first, 'MSG', 'nothing')!r} instead of "
                            "booting")
    except Exception as exc:  # noqa: BLE001 - every failure to start is reported, none crashes
        reason = (str(exc) if isinstance(exc, PodFailed) else
                  "the Keep pod did not boot in time" if isinstance(exc, asyncio.TimeoutError)
                  else f"the pod loader failed ({api_reason(exc)})")
        log(keep_id, "pod-failed", reason=reason[:500])
        write_frame(up_writer, protocol.ErrorBody(status=503, reason=f"the {backend} Keep could "
                                                  f"not start: {reason}"[:2000]))
        await up_writer.drain()
        if keep is not None:
            await keep.delete()
        if api is not None:
            await api.close()
        await announce_exit(keep_id, up_writer, reason[:300])
        return 0
    write_frame(up_writer, protocol.Lifecycle(event="booted", detail=keep.note()))
    write_frame(down_writer, start)
    await down_writer.drain()
    monitor = asyncio.create_task(keep.monitor(down_writer.close))
    try:
        await pump(keep_id, up_frames, up_writer, down_frames, down_writer, rewrite=keep.rewrite)
    finally:
        monitor.cancel()
        down_writer.close()
        await keep.delete()
        await api.close()
    how = keep.ended or "the Keep closed its control connection"
    log(keep_id, "pod-exited", how=how[:300])
    await announce_exit(keep_id, up_writer, how[:300])
    return 0
