"""What a Keep pod (Confidential Containers) must show, computed here, on the user's machine:
the init-data digest in its evidence — SEV-SNP HOST_DATA, TDX MRCONFIGID — from the init-data
this client expects the host to have launched it with (keep/shared/pod_keep.py: the Keep
container image, pinned by digest, and the Kata agent policy that lets the guest run only that
image with the Keep's command and refuses exec, attach and log reads).  The host's word is never
used: the image is the one the user's trust policy names (``keep_container``), or the published
one pinned in keepbook (keep/container/published.toml).

The pod's guest itself (OVMF, kernel, initrd and command line of the cluster's Kata install) is
not keepbook's to build, so its launch measurement is a reference value the user supplies
(``[reference] measurement``), required beside the init-data.
"""

from __future__ import annotations

from keepbook.keep.shared import pod_keep
from keepbook.keep.shared.evidence.trust import Claim, failed, unverified, verified
from keepbook.kernel.trust_policy import TrustPolicy


def expected_image(trust: TrustPolicy) -> pod_keep.ImageRef | None:
    if trust.keep_container:
        return pod_keep.ImageRef.parse(trust.keep_container)
    return pod_keep.published_image()


def expected_init_data(backend: str, trust: TrustPolicy) -> tuple[str | None, bytes | None, Claim]:
    """(the evidence claim that must carry it, the value, the ``init_data`` claim saying how it
    was obtained — failed when it cannot be, so that the Keep is refused, not waved through)."""
    if backend not in pod_keep.INIT_DATA_FIELD:
        return None, None, unverified(
            "init_data", f"a {backend} pod has no TEE: nothing binds its init-data (the agent "
                         "policy and the image it pins) into its unsigned evidence")
    field = pod_keep.INIT_DATA_FIELD[backend][1]
    try:
        image = expected_image(trust)
    except ValueError as exc:
        return field, None, failed("init_data", f"cannot compute the init-data a {backend} Keep "
                                                f"must be launched with: {exc}")
    if image is None:
        return field, None, failed(
            "init_data", "no Keep container image to expect: none is published in this keepbook "
                         "(keep/container/published.toml is empty) and your trust policy names "
                         "none — set keep_container = \"REPOSITORY@sha256:…\" to the image your "
                         "keep manager's operator built and pushed")
    claim_name, value = pod_keep.expected_tee_field(image, backend)
    document = pod_keep.init_data(image, backend)
    return claim_name, value, verified(
        "init_data", f"computed here: the init-data pinning image {image.repository}@"
                     f"{image.digest[:19]}… and the agent policy that refuses exec, attach and "
                     f"log reads; its {document.algorithm} digest must be the evidence's "
                     f"{claim_name.upper()}", image=str(image), expected=value.hex(),
        field=claim_name, document_digest=document.digest().hex())


def missing_measurement(backend: str) -> Claim:
    """A hardware pod without a reference launch measurement: refused, saying where to get one."""
    return failed("expected_measurement",
                  f"a {backend} Keep's launch measurement is that of your cluster's Kata guest "
                  "(its firmware, kernel, initrd and command line), which keepbook does not build: "
                  "give [reference] measurement in your trust policy — from your Confidential "
                  "Containers release's reference values, or computed from the node's Kata "
                  "artifacts (sev-snp-measure for kata-qemu-snp; MRTD/RTMRs for kata-qemu-tdx)")
