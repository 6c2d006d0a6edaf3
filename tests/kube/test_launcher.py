"""``keepbook keepmgr --launcher kubernetes`` end to end, against a Kubernetes API mock (kmock's
emulator on loopback) — no cluster here.  What is real: the keep manager, one keepldr per Keep
with its Kubernetes client (kubernetes_asyncio) speaking HTTP to the API, the objects it creates
and deletes, its watch, the Keep's own code and the client.  What is a test double
(tests/kube/cluster.py): the node — when the mock has the pod, the double reports it Pending,
gives its Service a loopback ClusterIP, runs the Keep container's command as a local process
there and reports it Running; or, per scenario, fails it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from keepbook.keep.host import kube_objects as objs
from keepbook.keep.shared import initdata, pod_keep
from keepbook.keep.shared import protocol as p
from keepbook.kernel.agent import ClientAgent, NewKeep
from tests.conftest import Manager
from tests.kube.cluster import NETPOLS, PODS, SERVICES, FakeCluster
from tests.support.cells import print_wat
from tests.support.http import http

IMAGE = "registry.example/keepbook/keep@sha256:" + "ab" * 32


def _start(tmp_path, scenario: str = "run", runtime_classes=("kata-qemu-coco-dev",)):
    cluster = FakeCluster(tmp_path, scenario, runtime_classes).start()
    (tmp_path / "host").mkdir()
    try:
        mgr = Manager(tmp_path / "host", backends="", extra=[
            "--launcher", "kubernetes", "--namespace", "keepbook", "--kubeconfig",
            str(cluster.kubeconfig), "--keep-image", IMAGE])
    except BaseException:
        cluster.stop()
        raise
    return cluster, mgr


@pytest.fixture
def running(tmp_path):
    cluster, mgr = _start(tmp_path)
    yield cluster, mgr
    mgr.stop()
    cluster.stop()


def _create(mgr, backend="coco-dev") -> tuple[int, bytes]:
    return http("POST", mgr.url + "/v1/keeps", p.CreateKeep(backend=backend).to_cbor(), token=mgr.token)


def _until(check, what: str, timeout: float = 20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _all_gone(cluster) -> bool:
    return not (cluster.names(PODS) or cluster.names(SERVICES) or cluster.names(NETPOLS))


def test_contracts_offer_the_pod_backends_the_cluster_has(running):
    cluster, mgr = running
    status, body = http("GET", mgr.url + "/v1/contracts", token=mgr.token)
    backends = {b.name: b for b in p.Contracts.from_cbor(body).backends}
    assert set(backends) == {"coco-snp", "coco-tdx", "coco-dev"}
    assert backends["coco-dev"].available and "kata-qemu-coco-dev" in backends["coco-dev"].note
    assert not backends["coco-snp"].available
    assert "no runtime class 'kata-qemu-snp'" in backends["coco-snp"].note
    status, body = _create(mgr, "coco-snp")
    assert status == 409 and "not available" in p.ErrorBody.from_cbor(body).reason


def test_a_keep_pod_from_create_to_delete(running, tmp_path):
    """The client's whole path: create → pod pending → running → attest → channel through the
    Service → a cell → close → pod, Service and NetworkPolicy deleted."""
    cluster, mgr = running
    tf = tmp_path / "token"
    tf.write_text(mgr.token)
    agent = ClientAgent()
    events: list = []
    try:
        session = agent.call(agent.new_keep(NewKeep(backend="coco-dev", manager=mgr.url,
                                                    token_file=str(tf))), timeout=120)
        keep_id = session.info.id
        name = f"keepbook-keep-{keep_id}"
        result = agent.call(agent.attest(), timeout=60)
        assert result.ok, result.vector.to_text()
        assert result.vector.label == "NO PROTECTION (VM)"
        assert result.vector.get("init_data").status.value == "unverified"
        import wasmtime
        module = wasmtime.wat2wasm(print_wat("hello from a pod\n"))
        agent.call(agent.run("wasm", events.append, module=module), timeout=60)
        assert "hello from a pod" in json.dumps([getattr(e, "content", e) for e in events],
                                                default=str)
        # the channel went to the Service's address, which the double pointed at the Keep
        address = cluster.seen_address[name][0]
        assert session.channel.endpoint.host == address
        assert session.channel.endpoint.port == pod_keep.CHANNEL_PORT

        # exactly the objects kube_objects builds, for this Keep and its user
        spec = objs.PodSpec(keep_id=keep_id, backend="coco-dev", namespace="keepbook",
                            runtime_class="kata-qemu-coco-dev",
                            image=pod_keep.ImageRef.parse(IMAGE),
                            memory_bytes=p.DEFAULT_LIMITS["memory_bytes"], user="token-file-1")
        pod_history = cluster.history(PODS, name)
        assert _subset(objs.pod(spec), pod_history[0])
        assert cluster.history(SERVICES, name)[0]["spec"]["ports"] == objs.service(spec)["spec"]["ports"]
        assert _subset(objs.network_policy(spec), cluster.history(NETPOLS, name)[0])
        assert pod_history[0]["metadata"]["labels"]["keepbook.dev/user"] == "token-file-1"
        document = initdata.decode_annotation(
            pod_history[0]["metadata"]["annotations"][initdata.ANNOTATION])
        assert document == pod_keep.init_data(spec.image, "coco-dev").render()
        phases = [v["status"]["phase"] for v in pod_history if v and "status" in v]
        assert phases[0] == "Pending" and phases[-1] == "Running"

        agent.call(agent.close(), timeout=60)
        _until(lambda: _all_gone(cluster), "the Keep's objects to be deleted")
    finally:
        agent.stop()
    pod_history = cluster.history(PODS, name)
    assert pod_history[-1] is None  # deleted
    assert cluster.seen[name] == ["created", "pending-reported", "pending", "running", "deleted"]
    deletes = [path for method, path in cluster.requests() if method == "DELETE"]
    assert sorted(d.split("?")[0] for d in deletes) == sorted([
        f"/api/v1/namespaces/keepbook/pods/{name}",
        f"/api/v1/namespaces/keepbook/services/{name}",
        f"/apis/networking.k8s.io/v1/namespaces/keepbook/networkpolicies/{name}"])
    watches = [path for method, path in cluster.requests() if method == "GET" and "watch=" in path]
    assert watches and all(f"metadata.name%3D{name}" in w or f"metadata.name={name}" in w
                           for w in watches)
    log = mgr.host_visible_text()
    assert '"event": "pod-running"' in log and '"event": "pod-deleted"' in log


def _subset(want, got, where: str = "") -> bool:
    """Every key of ``want`` is in ``got`` with the same value (the API server adds status)."""
    if isinstance(want, dict):
        assert isinstance(got, dict), where
        for k, v in want.items():
            assert k in got, f"{where}.{k} missing"
            _subset(v, got[k], f"{where}.{k}")
        return True
    assert want == got, f"{where}: sent {got!r}, expected {want!r}"
    return True


def _failed_create(tmp_path, scenario: str) -> tuple[str, FakeCluster, Manager]:
    cluster, mgr = _start(tmp_path, scenario)
    status, body = _create(mgr)
    assert status == 503, body
    return p.ErrorBody.from_cbor(body).reason, cluster, mgr


def test_an_image_that_cannot_be_pulled_ends_the_keep_with_the_reason(tmp_path):
    reason, cluster, mgr = _failed_create(tmp_path, "image-pull")
    try:
        assert "the coco-dev Keep could not start: ErrImagePull" in reason
        assert f'failed to pull and unpack image "{IMAGE}": not found' in reason
        _until(lambda: _all_gone(cluster), "the Keep's objects to be deleted")
        status, body = http("GET", mgr.url + "/v1/keeps", token=mgr.token)
        assert p.KeepList.from_cbor(body).keeps == []  # a failed create leaves nothing
    finally:
        mgr.stop()
        cluster.stop()


def test_a_quota_that_refuses_the_pod_ends_the_keep_with_the_reason(tmp_path):
    reason, cluster, mgr = _failed_create(tmp_path, "quota")
    try:
        assert "the cluster refused the Keep's objects" in reason
        assert "403" in reason and "exceeded quota: keepbook-quota" in reason
        _until(lambda: _all_gone(cluster), "the Service and NetworkPolicy to be deleted")
        assert cluster.names(PODS) == []
    finally:
        mgr.stop()
        cluster.stop()


def test_an_evicted_pod_ends_the_keep_with_the_reason(tmp_path):
    cluster, mgr = _start(tmp_path, "evict")
    try:
        status, body = _create(mgr)
        assert status == 201, body
        info = p.KeepInfo.from_cbor(body)
        assert "kata-qemu-coco-dev" in (info.host_note or "")
        cluster.evict(f"keepbook-keep-{info.id}")

        def failed():
            _, b = http("GET", f"{mgr.url}/v1/keeps/{info.id}", token=mgr.token)
            k = p.KeepInfo.from_cbor(b)
            return k if k.state == "failed" else None
        keep = _until(failed, "the Keep to fail")
        assert "Evicted: The node was low on resource: memory." in keep.reason
        _until(lambda: _all_gone(cluster), "the Keep's objects to be deleted")
    finally:
        mgr.stop()
        cluster.stop()


def _keepmgr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "keepbook.keep.host.keepmgr", *args],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "KUBERNETES_SERVICE_HOST": ""})


@pytest.mark.parametrize("args, why", [
    ([], "no Keep container image has been published yet"),
    (["--keep-image", "registry.example/keep:latest"], "not pinned by digest"),
    (["--keep-image", IMAGE, "--runtime-class", "kata-fast"], "--runtime-class coco-snp=kata-fast"),
    (["--keep-image", IMAGE, "--backends", "nil"], "offers only pod backends"),
    (["--keep-image", IMAGE, "--pool", "1"], "not pooled"),
])
def test_bad_kubernetes_options_are_refused_naming_the_fix(args, why):
    r = _keepmgr("--launcher", "kubernetes", "--port", "0", *args)
    assert r.returncode == 2 and why in r.stderr, r.stderr


def test_kubernetes_options_need_the_kubernetes_launcher():
    r = _keepmgr("--namespace", "x", "--port", "0")
    assert r.returncode == 2 and "go with --launcher kubernetes" in r.stderr
