"""The Kubernetes objects of one Keep pod, and what a pod's status says about the Keep.  Pure:
dicts in, dicts and reasons out (the launcher, keep/host/pod_launch.py, sends and watches them).

Per Keep: a Pod (the Keep container under the CoCo runtime class, its init-data annotation,
resources from the Keep's memory limit, labels naming the Keep and its user), a ClusterIP
Service (the control port and the attested channel's port: ``kubectl port-forward`` does not
reach into a Kata guest), and a NetworkPolicy (the channel from anywhere; the control port only
from the keep manager's pods).  Deleting the Keep deletes all three.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Mapping

from keepbook.keep.shared import initdata, pod_keep

MiB = 1 << 20
#: the container's memory besides the Keep's own limit: CPython, wasmtime, the wasmldr (the
#: guest kernel's share is the runtime class's pod overhead, which Kata adds itself)
POD_OVERHEAD_MIB = 256
KEEP_LABEL = "keepbook.dev/keep-id"
USER_LABEL = "keepbook.dev/user"
BACKEND_LABEL = "keepbook.dev/backend"
NAME_LABEL = "app.kubernetes.io/name"
MANAGED_LABEL = "app.kubernetes.io/managed-by"
KEEP_APP, MANAGER_APP = "keepbook-keep", "keepbook-keepmgr"
DIGEST_ANNOTATION = "keepbook.dev/init-data-sha384"
#: container states that end a Keep at once (the kubelet would only retry what cannot work)
FATAL_WAITING = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
                 "CreateContainerConfigError", "CreateContainerError", "RunContainerError",
                 "CrashLoopBackOff")
_LABEL_OK = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?")


@dataclass(frozen=True)
class PodSpec:
    """What one Keep pod is made of."""

    keep_id: str
    backend: str
    namespace: str
    runtime_class: str
    image: pod_keep.ImageRef
    memory_bytes: int
    user: str = ""

    @property
    def name(self) -> str:
        return f"keepbook-keep-{self.keep_id}"


def label_value(text: str) -> str:
    """``text`` as a label value (63 characters of ``[A-Za-z0-9_.-]``); a name that does not fit
    is shortened and given a digest suffix, so two users never share a label."""
    if _LABEL_OK.fullmatch(text or ""):
        return text
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", text or "").strip("-_.")[:40] or "user"
    return f"{cleaned}-{hashlib.sha256((text or '').encode()).hexdigest()[:12]}"


def labels(spec: PodSpec) -> dict[str, str]:
    return {NAME_LABEL: KEEP_APP, MANAGED_LABEL: MANAGER_APP, KEEP_LABEL: spec.keep_id,
            BACKEND_LABEL: spec.backend, USER_LABEL: label_value(spec.user or "unnamed")}


def memory_quantity(memory_bytes: int) -> str:
    return f"{-(-int(memory_bytes) // MiB) + POD_OVERHEAD_MIB}Mi"


def _meta(spec: PodSpec, **extra: Any) -> dict[str, Any]:
    return {"name": spec.name, "namespace": spec.namespace, "labels": labels(spec), **extra}


def pod(spec: PodSpec) -> dict[str, Any]:
    document = pod_keep.init_data(spec.image, spec.backend).render()
    memory = memory_quantity(spec.memory_bytes)
    resources = {"cpu": "1", "memory": memory}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": _meta(spec, annotations={
            initdata.ANNOTATION: initdata.encode_annotation(document),
            DIGEST_ANNOTATION: initdata.document_digest(document).hex()}),
        "spec": {
            "runtimeClassName": spec.runtime_class,
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "keep",
                "image": str(spec.image),
                "imagePullPolicy": "IfNotPresent",
                "command": pod_keep.container_args(spec.backend),
                "ports": [{"name": "control", "containerPort": pod_keep.CONTROL_PORT},
                          {"name": "https", "containerPort": pod_keep.CHANNEL_PORT}],
                "resources": {"requests": dict(resources), "limits": dict(resources)},
                "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
                                    "runAsUser": 65534, "capabilities": {"drop": ["ALL"]}},
            }],
        },
    }


def service(spec: PodSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": _meta(spec),
        "spec": {"type": "ClusterIP", "selector": {KEEP_LABEL: spec.keep_id},
                 "ports": [{"name": "control", "protocol": "TCP", "port": pod_keep.CONTROL_PORT,
                            "targetPort": pod_keep.CONTROL_PORT},
                           {"name": "https", "protocol": "TCP", "port": pod_keep.CHANNEL_PORT,
                            "targetPort": pod_keep.CHANNEL_PORT}]},
    }


def network_policy(spec: PodSpec) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": _meta(spec),
        "spec": {"podSelector": {"matchLabels": {KEEP_LABEL: spec.keep_id}},
                 "policyTypes": ["Ingress"],
                 "ingress": [
                     {"ports": [{"protocol": "TCP", "port": pod_keep.CHANNEL_PORT}]},
                     {"from": [{"namespaceSelector": {},
                                "podSelector": {"matchLabels": {NAME_LABEL: MANAGER_APP}}}],
                      "ports": [{"protocol": "TCP", "port": pod_keep.CONTROL_PORT}]}]},
    }


# ---------------------------------------------------------------------- reading a pod's status


def _containers(pod_obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    status = pod_obj.get("status") or {}
    return list(status.get("containerStatuses") or [])


def problem(pod_obj: Mapping[str, Any]) -> str | None:
    """Why this pod can no longer be (or become) the Keep — None while it still can."""
    meta = pod_obj.get("metadata") or {}
    status = pod_obj.get("status") or {}
    if meta.get("deletionTimestamp"):
        return "the pod is being deleted (not by this Keep's loader)"
    phase = status.get("phase")
    if phase == "Failed":
        why = ": ".join(x for x in (status.get("reason"), status.get("message")) if x)
        return f"the pod failed — {why or 'no reason given'}"
    if phase == "Succeeded":
        return "the Keep's container exited"
    for c in _containers(pod_obj):
        state = c.get("state") or {}
        waiting = state.get("waiting") or {}
        if waiting.get("reason") in FATAL_WAITING:
            msg = waiting.get("message") or ""
            return f"{waiting['reason']}{': ' + msg[:400] if msg else ''}"
        term = state.get("terminated")
        if term:
            return (f"the Keep's container terminated ({term.get('reason') or 'no reason'}, "
                    f"exit code {term.get('exitCode')})")
    return None


def running(pod_obj: Mapping[str, Any]) -> bool:
    status = pod_obj.get("status") or {}
    return status.get("phase") == "Running" and any(
        (c.get("state") or {}).get("running") is not None for c in _containers(pod_obj))


def pending_note(pod_obj: Mapping[str, Any] | None) -> str:
    """What a pod that is not running yet is waiting for (for a timeout's message)."""
    if not pod_obj:
        return "the pod was never seen"
    status = pod_obj.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("status") == "False" and cond.get("reason"):
            return f"{cond.get('type')}: {cond['reason']} {cond.get('message') or ''}".strip()
    for c in _containers(pod_obj):
        waiting = (c.get("state") or {}).get("waiting") or {}
        if waiting.get("reason"):
            return f"container waiting: {waiting['reason']}"
    return f"phase {status.get('phase') or 'unknown'}"


def service_address(svc: Mapping[str, Any]) -> tuple[str, int, int] | None:
    """(address, control port, channel port) of a Keep's Service, once it has an address."""
    spec = svc.get("spec") or {}
    ip = spec.get("clusterIP")
    ports = {p.get("name"): p.get("port") for p in spec.get("ports") or []}
    if not ip or ip == "None" or not isinstance(ports.get("control"), int) \
            or not isinstance(ports.get("https"), int):
        return None
    return ip, ports["control"], ports["https"]
