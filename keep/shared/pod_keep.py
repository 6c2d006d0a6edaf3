"""A Keep as a Confidential Containers pod: the facts the host's launcher, the Keep and the
client share.  No secrets, no I/O except reading the published image pin.

The pod runs the keepbook Keep container image, digest-pinned; the host hands the pod's guest
an init-data document (:mod:`.initdata`) holding a Kata agent policy that lets the guest start
only that image, with exactly the Keep's command, and refuses exec, attach (stdin, tty) and log
reads.  The TEE binds the document's digest into the evidence (SNP HOST_DATA, TDX MRCONFIGID),
so a client that computes the digest of the document *it* expects (:func:`init_data`) and
requires it knows the host launched that image under that policy.  ``kubectl port-forward`` does
not reach a process in a Kata guest at all (it connects inside the pod's host-side network
namespace), so the Keep is reached through a Service.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from keepbook.keep.shared import facts
from keepbook.keep.shared.initdata import InitData

#: the Keep's control frames (start, attest, provision, lifecycle) — host ⇄ Keep, plain TCP:
#: what crosses it is what the host sees anyway (sealed provisioning, public evidence)
CONTROL_PORT = 8444
#: the attested TLS channel, client ⇄ Keep
CHANNEL_PORT = 8443
#: the runtime class each pod backend runs under unless the operator names another
RUNTIME_CLASSES: Mapping[str, str] = MappingProxyType({
    "coco-snp": "kata-qemu-snp", "coco-tdx": "kata-qemu-tdx", "coco-dev": "kata-qemu-coco-dev"})
#: backend → (TEE platform of the init-data field, the evidence field's claim name)
INIT_DATA_FIELD: Mapping[str, tuple[str, str]] = MappingProxyType({
    "coco-snp": ("snp", "host_data"), "coco-tdx": ("tdx", "mrconfigid")})
ENTRY_MODULE = "keepbook.keep.inside.pod"
PYTHON = "/usr/bin/python3.11"  # Debian 12's, as in the Keep image (keep/image/inputs.lock)
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: where the container's mounts may be (the runtime's own: /proc, /dev, /sys, the files the
#: kubelet writes); anything else — a volume over the code, say — is refused by the policy
ALLOWED_MOUNTS = ("/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys",
                  "/sys/fs/cgroup", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf",
                  "/dev/termination-log")
PUBLISHED = Path(__file__).resolve().parents[1] / "container" / "published.toml"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_REPOSITORY = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)+")


class PodKeepError(ValueError):
    """A pod Keep's setting is unusable; the message names the check and the fix."""


@dataclass(frozen=True)
class ImageRef:
    """A container image pinned by digest: ``repository@sha256:…`` (never a tag)."""

    repository: str
    digest: str

    @classmethod
    def parse(cls, ref: str) -> "ImageRef":
        if not isinstance(ref, str) or len(ref) > 512 or "@" not in ref:
            raise PodKeepError(f"the Keep container image {str(ref)[:80]!r} is not pinned by digest: "
                               "give it as REPOSITORY@sha256:<64 hex digits>")
        repo, digest = ref.rsplit("@", 1)
        if ":" in repo.rsplit("/", 1)[-1]:
            raise PodKeepError(f"the Keep container image {ref[:120]!r} names a tag as well as a "
                               "digest: give only REPOSITORY@sha256:…")
        if not _REPOSITORY.fullmatch(repo):
            raise PodKeepError(f"{repo[:120]!r} is not a container image repository "
                               "(registry/name, lower case)")
        if not _DIGEST.fullmatch(digest):
            raise PodKeepError(f"{digest[:80]!r} is not a sha256 image digest (sha256:<64 hex digits>)")
        return cls(repo, digest)

    def __str__(self) -> str:
        return f"{self.repository}@{self.digest}"


def published_image(path: Path = PUBLISHED) -> ImageRef | None:
    """The pinned published Keep container image (keep/container/published.toml), or None
    while none has been published (the pin's digest is empty): then the operator and the
    client each name the image they built and pushed (docs/deploy.md)."""
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PodKeepError(f"cannot read the Keep container image pin {path}: {exc}") from None
    if not doc.get("digest"):
        return None
    return ImageRef.parse(f"{doc.get('repository', '')}@{doc['digest']}")


def check_pod_backend(backend: str) -> facts.Backend:
    spec = facts.backend(backend)
    if not spec.pod:
        raise PodKeepError(f"{backend} Keeps are not Kubernetes pods; pod backends: "
                           f"{', '.join(facts.POD_BACKENDS)}")
    return spec


def container_args(backend: str) -> list[str]:
    """The Keep container's command, exactly (the agent policy allows no other)."""
    check_pod_backend(backend)
    return [PYTHON, "-m", ENTRY_MODULE, "--backend", backend, "--control-port",
            str(CONTROL_PORT), "--channel-port", str(CHANNEL_PORT)]


_DENIED = ("AddSwapRequest", "CloseStdinRequest", "ExecProcessRequest", "PauseContainerRequest",
           "ReadStreamRequest", "ReseedRandomDevRequest", "ResumeContainerRequest",
           "SetPolicyRequest", "StartTracingRequest", "StopTracingRequest", "TtyWinResizeRequest",
           "UpdateContainerRequest", "UpdateEphemeralMountsRequest", "WriteStreamRequest")
_ALLOWED = ("AddARPNeighborsRequest", "CreateSandboxRequest", "DestroySandboxRequest",
            "GetMetricsRequest", "GetOOMEventRequest", "GuestDetailsRequest",
            "ListInterfacesRequest", "ListRoutesRequest", "MemHotplugByProbeRequest",
            "OnlineCPUMemRequest", "PullImageRequest", "RemoveContainerRequest",
            "RemoveStaleVirtiofsShareMountsRequest", "SetGuestDateTimeRequest",
            "SignalProcessRequest", "StartContainerRequest", "StatsContainerRequest",
            "UpdateInterfaceRequest", "UpdateRoutesRequest", "WaitProcessRequest")
#: what the policy refuses outright, by the kubectl verb it would serve (docs/deploy.md)
DENIED_REQUESTS = MappingProxyType({
    "exec": ("ExecProcessRequest",),
    "attach": ("WriteStreamRequest", "CloseStdinRequest", "TtyWinResizeRequest", "ReadStreamRequest"),
    "logs": ("ReadStreamRequest",),
    "policy change": ("SetPolicyRequest",)})


def agent_policy(image: ImageRef, backend: str) -> str:
    """The Kata agent policy (Rego, package ``agent_policy``): the guest creates the pod's
    sandbox (its pause process) and the Keep's container — ``image`` with the Keep's command, the runtime's own
    mounts and no other environment than PATH, HOSTNAME and the cluster's service variables —
    and refuses exec, stdin/stdout streams (attach, logs), tty resizes and policy changes."""
    args = json.dumps(container_args(backend))
    lines = ["package agent_policy", "", "import future.keywords.every",
             "import future.keywords.in", "import input", "",
             f"# keepbook Keep pod ({backend}), image {image} (keep/shared/pod_keep.py)"]
    lines += [f"default {r} := false" for r in ("CopyFileRequest", "CreateContainerRequest")]
    lines += [f"default {r} := false" for r in _DENIED]
    lines += [f"default {r} := true" for r in _ALLOWED]
    lines += [
        "",
        "CreateContainerRequest {  # the sandbox's pause container (guest-pulled bundle)",
        '    input.OCI.Annotations["io.kubernetes.cri.container-type"] == "sandbox"',
        '    input.OCI.Process.Args == ["/pause"]',
        "    every e in input.OCI.Process.Env { allowed_env(e) }",
        "    every m in input.OCI.Mounts { m.destination in allowed_mounts }",
        "}",
        "",
        "CreateContainerRequest {",
        '    input.OCI.Annotations["io.kubernetes.cri.container-type"] == "container"',
        f'    input.OCI.Annotations["io.kubernetes.cri.image-name"] == {json.dumps(str(image))}',
        f"    input.OCI.Process.Args == {args}",
        "    not input.OCI.Process.Terminal",
        "    every e in input.OCI.Process.Env { allowed_env(e) }",
        "    every m in input.OCI.Mounts { m.destination in allowed_mounts }",
        "}",
        "",
        f"allowed_mounts := {json.dumps(list(ALLOWED_MOUNTS))}",
        "",
        f"allowed_env(e) {{ e == {json.dumps(PATH_ENV)} }}",
        'allowed_env(e) { regex.match("^HOSTNAME=[a-z0-9.-]{1,253}$", e) }',
        'allowed_env(e) { regex.match("^KUBERNETES_(SERVICE|PORT)[A-Z0-9_]*=[0-9a-z.:/]*$", e) }',
        "",
        "CopyFileRequest {",
        '    startswith(input.path, "/run/kata-containers/shared/containers/")',
        '    not contains(input.path, "..")',
        "}",
    ]
    return "\n".join(lines) + "\n"


def init_data(image: ImageRef, backend: str) -> InitData:
    """The init-data a ``backend`` Keep pod of ``image`` is launched with — the host puts it
    in the pod, the client computes the digest it must find in the evidence from it."""
    keep = (f'image = "{image}"\nbackend = "{backend}"\n'
            f"control_port = {CONTROL_PORT}\nchannel_port = {CHANNEL_PORT}\n")
    return InitData(algorithm="sha384", data={"policy.rego": agent_policy(image, backend),
                                              "keepbook.toml": keep})


def expected_tee_field(image: ImageRef, backend: str) -> tuple[str, bytes]:
    """(the evidence claim that carries it, the value) for a hardware pod backend."""
    platform, claim = INIT_DATA_FIELD[backend]
    return claim, init_data(image, backend).tee_field(platform)
