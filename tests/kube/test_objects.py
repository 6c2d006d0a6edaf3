"""The Kubernetes objects of one Keep pod, exactly, and how a pod's status is read."""

from __future__ import annotations

import pytest

from keepbook.keep.host import kube_objects as objs
from keepbook.keep.shared import initdata, pod_keep

IMAGE = pod_keep.ImageRef.parse("registry.example/keepbook/keep@sha256:" + "ab" * 32)
SPEC = objs.PodSpec(keep_id="0123456789abcdef", backend="coco-snp", namespace="keepbook",
                    runtime_class="kata-qemu-snp", image=IMAGE, memory_bytes=1 << 30, user="alice")
LABELS = {"app.kubernetes.io/name": "keepbook-keep", "app.kubernetes.io/managed-by": "keepbook-keepmgr",
          "keepbook.dev/keep-id": "0123456789abcdef", "keepbook.dev/backend": "coco-snp",
          "keepbook.dev/user": "alice"}


def test_pod():
    pod = objs.pod(SPEC)
    annotations = pod["metadata"].pop("annotations")
    assert pod["metadata"] == {"name": "keepbook-keep-0123456789abcdef", "namespace": "keepbook",
                               "labels": LABELS}
    document = initdata.decode_annotation(annotations[initdata.ANNOTATION])
    assert document == pod_keep.init_data(IMAGE, "coco-snp").render()
    assert annotations[objs.DIGEST_ANNOTATION] == initdata.document_digest(document).hex()
    limits = {"cpu": "1", "memory": "1280Mi"}  # the Keep's 1 GiB + the container's 256 MiB
    assert pod["spec"] == {
        "runtimeClassName": "kata-qemu-snp", "restartPolicy": "Never",
        "automountServiceAccountToken": False, "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 5,
        "containers": [{
            "name": "keep", "image": str(IMAGE), "imagePullPolicy": "IfNotPresent",
            "command": ["/usr/bin/python3.11", "-m", "keepbook.keep.inside.pod", "--backend",
                        "coco-snp", "--control-port", "8444", "--channel-port", "8443"],
            "ports": [{"name": "control", "containerPort": 8444},
                      {"name": "https", "containerPort": 8443}],
            "resources": {"requests": limits, "limits": limits},
            "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
                                "runAsUser": 65534, "capabilities": {"drop": ["ALL"]}}}]}


def test_service_and_network_policy():
    assert objs.service(SPEC) == {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": SPEC.name, "namespace": "keepbook", "labels": LABELS},
        "spec": {"type": "ClusterIP", "selector": {"keepbook.dev/keep-id": SPEC.keep_id},
                 "ports": [{"name": "control", "protocol": "TCP", "port": 8444, "targetPort": 8444},
                           {"name": "https", "protocol": "TCP", "port": 8443, "targetPort": 8443}]}}
    netpol = objs.network_policy(SPEC)
    ingress = netpol["spec"]["ingress"]
    assert ingress[0] == {"ports": [{"protocol": "TCP", "port": 8443}]}  # the channel: anyone
    assert ingress[1]["ports"] == [{"protocol": "TCP", "port": 8444}]   # control: keepmgr only
    assert ingress[1]["from"][0]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name":
                                                                   "keepbook-keepmgr"}}


@pytest.mark.parametrize("name, label", [
    ("alice", "alice"), ("token-1", "token-1"), ("", "unnamed")])
def test_user_labels(name, label):
    spec = objs.PodSpec(**{**SPEC.__dict__, "user": name})
    assert objs.labels(spec)[objs.USER_LABEL] == label


def test_user_names_that_are_no_label_values_stay_distinct():
    a, b = objs.label_value("Ann Lee <ann@x>"), objs.label_value("Ann Lee <ann@y>")
    assert a != b and a.startswith("Ann-Lee") and len(a) <= 63
    assert objs._LABEL_OK.fullmatch(a) and objs._LABEL_OK.fullmatch(objs.label_value("x" * 300))


def _pod(phase="Pending", state=None, **status):
    return {"metadata": {"name": "p"}, "status": {"phase": phase, **status,
            "containerStatuses": [{"name": "keep", "state": state or {"waiting": {"reason": "ContainerCreating"}}}]}}


@pytest.mark.parametrize("pod, why", [
    (_pod(), None),
    (_pod("Running", {"running": {}}), None),
    (_pod(state={"waiting": {"reason": "ErrImagePull", "message": "not found"}}), "ErrImagePull: not found"),
    (_pod(state={"waiting": {"reason": "ImagePullBackOff"}}), "ImagePullBackOff"),
    (_pod("Failed", reason="Evicted", message="The node was low on resource: memory."),
     "the pod failed — Evicted: The node was low on resource: memory."),
    (_pod("Running", {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}),
     "terminated (OOMKilled, exit code 137)"),
    (_pod("Succeeded"), "container exited"),
    ({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}, "status": {"phase": "Running"}},
     "being deleted"),
])
def test_what_a_status_says(pod, why):
    got = objs.problem(pod)
    assert (got is None) if why is None else (why in got)


def test_running_and_pending_notes():
    assert objs.running(_pod("Running", {"running": {}}))
    assert not objs.running(_pod("Running"))  # the container is not running yet
    unschedulable = _pod(conditions=[{"type": "PodScheduled", "status": "False",
                                      "reason": "Unschedulable", "message": "0/3 nodes: no runtime"}])
    assert objs.pending_note(unschedulable) == "PodScheduled: Unschedulable 0/3 nodes: no runtime"
    assert objs.pending_note(_pod()) == "container waiting: ContainerCreating"
    assert objs.pending_note(None) == "the pod was never seen"


def test_service_address():
    svc = objs.service(SPEC)
    assert objs.service_address(svc) is None  # no ClusterIP yet
    svc["spec"]["clusterIP"] = "10.96.7.9"
    assert objs.service_address(svc) == ("10.96.7.9", 8444, 8443)
    svc["spec"]["clusterIP"] = "None"
    assert objs.service_address(svc) is None
