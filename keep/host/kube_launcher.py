"""``keepbook keepmgr --launcher kubernetes``: the keep manager's side of Keeps as Confidential
Containers pods — its options, which pod backends it offers (and whether the cluster has their
runtime classes), and what it tells each Keep's loader (keep/host/pod_launch.py).  Untrusted
host, like all of keepmgr.

    keepbook keepmgr --launcher kubernetes [--namespace NS] [--runtime-class NAME]...
                     [--keep-image REPOSITORY@sha256:…] [--kubeconfig FILE]

``--runtime-class`` names the runtime class of one pod backend: a known CoCo class
(``kata-qemu-snp`` → ``coco-snp``, ``kata-qemu-tdx`` → ``coco-tdx``, ``kata-qemu-coco-dev`` →
``coco-dev``), or ``BACKEND=NAME`` for a class of another name.  Given, only the backends it
names are offered; not given, all three with their default classes.
"""

from __future__ import annotations

import argparse
from typing import Callable

from keepbook.keep.host import backends as backends_mod
from keepbook.keep.shared import facts, pod_keep

LAUNCHER = "kubernetes"
PROBE_TIMEOUT_S = 10.0


def add_arguments(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("--launcher kubernetes: each Keep a Confidential Containers pod "
                              "(docs/deploy.md)")
    g.add_argument("--namespace", default="default", help="namespace of the Keep pods")
    g.add_argument("--runtime-class", action="append", default=[], metavar="NAME",
                   help="runtime class of a pod backend: kata-qemu-snp, kata-qemu-tdx, "
                        "kata-qemu-coco-dev, or BACKEND=NAME (repeat for several)")
    g.add_argument("--keep-image", default="", metavar="REPOSITORY@sha256:…",
                   help="the Keep container image (default: the published one pinned in "
                        "keep/container/published.toml)")
    g.add_argument("--kubeconfig", default=None, metavar="FILE",
                   help="the cluster (default: the pod's service account in a cluster, else "
                        "~/.kube/config)")


def runtime_classes(given: list[str]) -> dict[str, str]:
    """``--runtime-class`` values → {backend: runtime class}; ValueError naming a bad one."""
    if not given:
        return dict(pod_keep.RUNTIME_CLASSES)
    known = {rc: b for b, rc in pod_keep.RUNTIME_CLASSES.items()}
    out: dict[str, str] = {}
    for item in given:
        backend, sep, name = item.partition("=")
        if not sep:
            name, backend = item, known.get(item, "")
            if not backend:
                raise ValueError(f"--runtime-class {item}: not a known Confidential Containers "
                                 f"class ({', '.join(known)}); say which backend it runs: "
                                 f"--runtime-class coco-snp={item}")
        if backend not in facts.POD_BACKENDS:
            raise ValueError(f"--runtime-class {item}: {backend!r} is not a pod backend "
                             f"({', '.join(facts.POD_BACKENDS)})")
        if not name or len(name) > 253:
            raise ValueError(f"--runtime-class {item}: no runtime class name")
        out[backend] = name
    return out


def keep_image(given: str) -> pod_keep.ImageRef:
    if given:
        return pod_keep.ImageRef.parse(given)
    published = pod_keep.published_image()
    if published is None:
        raise ValueError("no Keep container image has been published yet (the pin in "
                         "keep/container/published.toml is empty): build and push it "
                         "(keep/container/Dockerfile) and give --keep-image REPOSITORY@sha256:…")
    return published


def check(args: argparse.Namespace) -> str | None:
    """Why these options cannot start a keep manager (None: they can)."""
    kube_given = args.runtime_class or args.keep_image or args.kubeconfig or \
        args.namespace != "default"
    if args.launcher != LAUNCHER:
        if kube_given:
            return ("--namespace, --runtime-class, --keep-image and --kubeconfig go with "
                    "--launcher kubernetes")
        return None
    try:
        classes = runtime_classes(args.runtime_class)
        keep_image(args.keep_image)
        selected(args, classes)
    except ValueError as exc:
        return str(exc)
    if args.pool:
        return "--pool: Keep pods are not pooled (each pod is sized from its create request)"
    return None


def selected(args: argparse.Namespace, classes: dict[str, str]) -> list[str]:
    names = [n for n in (args.backends or "").split(",") if n]
    if not names:
        return list(classes)
    wrong = [n for n in names if n not in classes]
    if wrong:
        raise ValueError(f"--launcher kubernetes offers only pod backends with a runtime class "
                         f"({', '.join(classes)}); not {', '.join(wrong)}")
    return names


async def offered(args: argparse.Namespace) -> list[backends_mod.BackendSpec]:
    """The pod backends, each available when the cluster has its runtime class."""
    import asyncio

    from keepbook.keep.host.pod_launch import api_client, api_reason

    classes = runtime_classes(args.runtime_class)
    names = selected(args, classes)
    found: dict[str, tuple[bool, str]] = {}
    try:
        api = await api_client(args.kubeconfig)
    except Exception as exc:  # noqa: BLE001 - a cluster we cannot reach offers nothing
        why = f"cannot reach the cluster ({api_reason(exc)})"
        return [backends_mod.BackendSpec(facts.BACKENDS[n], known=(False, why)) for n in names]
    from kubernetes_asyncio import client

    node = client.NodeV1Api(api)
    try:
        for n in names:
            rc = classes[n]
            try:
                await asyncio.wait_for(node.read_runtime_class(rc), PROBE_TIMEOUT_S)
                found[n] = (True, f"{facts.BACKENDS[n].note} — namespace {args.namespace}, "
                                  f"runtime class {rc}")
            except Exception as exc:  # noqa: BLE001
                if getattr(exc, "status", None) == 404:
                    found[n] = (False, f"the cluster has no runtime class {rc!r}: install "
                                       "Confidential Containers (docs/deploy.md)")
                else:
                    found[n] = (False, f"cannot read runtime class {rc!r} ({api_reason(exc)})")
    finally:
        await api.close()
    return [backends_mod.BackendSpec(facts.BACKENDS[n], known=found[n]) for n in names]


def loader_args(args: argparse.Namespace) -> Callable[[str], list[str]]:
    """What a Keep's loader is told for a ``backend`` pod (keepldr's kubernetes options)."""
    classes = runtime_classes(args.runtime_class)
    image = str(keep_image(args.keep_image))

    def for_backend(backend: str) -> list[str]:
        out = ["--namespace", args.namespace, "--runtime-class", classes[backend],
               "--keep-image", image]
        return out + (["--kubeconfig", args.kubeconfig] if args.kubeconfig else [])
    return for_backend
