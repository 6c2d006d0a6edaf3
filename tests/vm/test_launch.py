"""The hardware launch path, checked without the hardware (none here): the QEMU command lines
the launcher builds for kvm, SEV-SNP and TDX Keeps, and the SEV-SNP launch measurement the
client computes — against sev-snp-measure's own known answers, and bound to the Keep image.
These launches cannot run on this machine (no SEV-SNP or TDX host; Debian 12's QEMU 7.2 has
neither sev-snp-guest nor tdx-guest): docs/attestation.md says what ran and what was checked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from keepbook.keep.host import vm
from keepbook.keep.shared import protocol as p
from keepbook.keep.shared import vm_image
from keepbook.keep.shared.sealing import DEFAULT_SUITE
from keepbook.kernel import launch_measurement as lm
from keepbook.kernel.attestation import ExpectationBuilder, verify_attestation
from keepbook.kernel.trust_policy import TrustPolicy
from tests.vm.conftest import requires_vm

DATA = Path(__file__).parent / "data"
AMDSEV = DATA / "ovmf_AmdSev_suffix.bin"
NULL = Path("/dev/null")


# ---------------------------------------------------------------------- SNP measurement (KAT)


@pytest.mark.parametrize("features, digest", [
    (0x21, "803f691094946e42068aaa3a8f9e26a5c89f36f7b73ecfb28c653360fe4b3aba7e534442e7e1e17895dfe778d0228977"),
    (0x1, "6d287813eb5222d770f75005c664e34c204f385ce832cc2ce7d0d6f354454362f390ef83a92046c042e706363b4b08fa"),
])
def test_snp_measurement_matches_sev_snp_measure_known_answers(features, digest):
    launch = lm.SnpLaunch(ovmf=AMDSEV, kernel=NULL, initrd=NULL, cmdline="console=ttyS0 loglevel=7",
                          vcpus=1, vcpu_type="EPYC-v4", guest_features=features)
    assert lm.expected_snp_measurement(launch).hex() == digest


def test_an_ovmf_without_kernel_hashes_is_named():
    launch = lm.SnpLaunch(ovmf=DATA / "ovmf_OvmfX64_suffix.bin", kernel=NULL, initrd=NULL, cmdline="")
    with pytest.raises(lm.MeasurementError, match="not the AmdSev build"):
        lm.expected_snp_measurement(launch)


def test_missing_firmware_and_unknown_vcpu_are_named(tmp_path):
    with pytest.raises(lm.MeasurementError, match="no SEV-SNP guest firmware"):
        lm.expected_snp_measurement(lm.SnpLaunch(tmp_path / "none.fd", NULL, NULL, ""))
    with pytest.raises(lm.MeasurementError, match="unknown vCPU type"):
        lm.expected_snp_measurement(lm.SnpLaunch(AMDSEV, NULL, NULL, "", vcpu_type="Pentium"))


@requires_vm
def test_snp_measurement_covers_the_image_and_its_command_line(tmp_path):
    image = vm_image.KeepImage.load()
    launch = lm.snp_launch(image, AMDSEV)
    assert launch.cmdline == (f"{image.cmdline} keepbook.image={image.digest} "
                              "keepbook.backend=snp")
    base = lm.expected_snp_measurement(launch)
    assert len(base) == 48
    other = tmp_path / "initrd"
    other.write_bytes(image.initrd.read_bytes()[:-4] + b"\0\0\0\1")
    changed = [lm.SnpLaunch(AMDSEV, image.kernel, other, launch.cmdline),
               lm.SnpLaunch(AMDSEV, image.kernel, image.initrd, launch.cmdline + " debug"),
               lm.SnpLaunch(AMDSEV, image.kernel, image.initrd, launch.cmdline, vcpus=2)]
    assert len({base, *(lm.expected_snp_measurement(c) for c in changed)}) == 4


def test_tdx_needs_user_supplied_reference_values():
    value, claim = lm.expected_launch("tdx")
    assert value is None and claim.status.value == "failed"
    assert "[reference] measurement" in claim.reason and "rtmrs" in claim.reason


# ---------------------------------------------------------------------- the client requires it


def _expect(nonce: bytes, backend: str, trust: TrustPolicy):
    """What the client expects of a Keep it asked the default create of ``backend`` for."""
    return (ExpectationBuilder().nonce(nonce).trust_policy(trust)
            .requested(p.CreateKeep(backend=backend)).build())


def _snp_response(vectors: Path) -> p.AttestResponse:
    """A genuine AMD report (go-sev-guest's test data, chained to AMD's pinned roots) in an
    attest answer: its launch measurement is some other guest's, not our image's."""
    snp = vectors / "snp"
    from keepbook.keep.shared.evidence.certs import load_certs

    certs = [c for f in ("go-sev-guest__verify_testdata_vcek.testcer",
                         "go-sev-guest__verify_trust_ask_ark_milan.pem")
             for c in load_certs((snp / f).read_bytes())]
    cfg = p.KeepConfig(backend="snp", profile="staging", limits=dict(p.DEFAULT_LIMITS), policy=b"",
                       runtime={"image": "x"}, keep_id="k1")
    return p.AttestResponse(evidence_kind="sev-snp",
                            evidence=(snp / "go-sev-guest__verify_testdata_attestation.bin").read_bytes(),
                            certs=certs, hpke_suite=DEFAULT_SUITE, hpke_public_key=bytes(32),
                            config=cfg.to_cbor(), nonce=bytes(32))


@requires_vm
@pytest.mark.vectors
def test_snp_keep_is_refused_unless_it_measures_as_our_image(monkeypatch):
    vectors = Path(os.environ.get("KEEPBOOK_VECTORS", ""))
    if not (vectors / "snp" / "go-sev-guest__verify_testdata_attestation.bin").is_file():
        pytest.skip("real SEV-SNP vectors not found: set KEEPBOOK_VECTORS")
    monkeypatch.setenv(vm_image.SNP_OVMF_ENV, str(AMDSEV))
    resp = _snp_response(vectors)
    result = verify_attestation(resp, _expect(bytes(32), "snp", TrustPolicy()))
    claims = {c.name: c for c in result.vector.claims}
    expected = lm.expected_snp_measurement(lm.snp_launch(vm_image.KeepImage.load(), AMDSEV))
    assert claims["expected_measurement"].status.value == "verified"
    assert claims["expected_measurement"].detail["measurement"] == expected.hex()
    assert claims["measurement"].status.value == "failed"
    assert {"measurement", "expected_measurement"} <= result.vector.required
    assert not result.ok


def test_snp_keep_without_an_image_or_firmware_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv(vm_image.ENV_DIR, str(tmp_path / "no-image"))
    value, claim = lm.expected_launch("snp")
    assert value is None and claim.status.value == "failed"
    assert "keepbook image build" in claim.reason


# ---------------------------------------------------------------------- QEMU command lines


def _launch(tmp_path) -> vm.Launch:
    image = vm_image.KeepImage(dir=tmp_path, digest="ab" * 32, cmdline="console=ttyS0 quiet",
                               manifest={})
    return vm.Launch(image=image, backend="kvm", memory_mib=1536,
                     control_socket=tmp_path / "control.sock", host_port=40001)


def _opt(cmd: list[str], flag: str) -> list[str]:
    return [cmd[i + 1] for i, a in enumerate(cmd) if a == flag]


def test_kvm_command_line(tmp_path):
    launch = _launch(tmp_path)
    tcg = vm.kvm_command("qemu", launch, vm.Accel("tcg", "test"))
    kvm = vm.kvm_command("qemu", launch, vm.Accel("kvm", "test"))
    assert _opt(tcg, "-accel") == ["tcg"] and _opt(tcg, "-cpu") == ["max"]
    assert _opt(kvm, "-accel") == ["kvm"] and _opt(kvm, "-cpu") == ["host"]
    assert _opt(tcg, "-m") == ["1536"] and "-nographic" in tcg and "-nodefaults" in tcg
    assert _opt(tcg, "-append") == ["console=ttyS0 quiet keepbook.image=" + "ab" * 32 +
                                    " keepbook.backend=kvm"]
    devices = _opt(tcg, "-device")
    assert "virtio-rng-pci" in devices
    assert f"virtserialport,chardev=control,name={vm_image.CONTROL_PORT}" in devices
    assert _opt(tcg, "-netdev") == [f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:40001-"
                                    f"{vm_image.GUEST_ADDRESS}:{vm_image.GUEST_PORT}"]
    assert _opt(tcg, "-chardev") == [f"socket,id=control,path={tmp_path / 'control.sock'}"]
    # no host file sharing of any kind
    joined = " ".join(tcg)
    assert not any(x in joined for x in ("virtfs", "9p", "vhost-user-fs", "-drive", "-hda", "fsdev"))


def test_snp_command_line(tmp_path):
    launch = _launch(tmp_path)
    launch = vm.Launch(launch.image, "snp", launch.memory_mib, launch.control_socket, launch.host_port)
    cmd = vm.snp_command("qemu", launch, Path("/fw/OVMF.amdsev.fd"))
    assert _opt(cmd, "-accel") == ["kvm"] and _opt(cmd, "-cpu") == [vm_image.SNP_VCPU_TYPE]
    assert _opt(cmd, "-smp") == [str(vm_image.SNP_VCPUS)] and _opt(cmd, "-bios") == ["/fw/OVMF.amdsev.fd"]
    assert _opt(cmd, "-machine") == ["q35,confidential-guest-support=sev0,memory-backend=ram0"]
    assert _opt(cmd, "-object") == [
        "memory-backend-memfd,id=ram0,size=1536M",
        "sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,kernel-hashes=on,policy=0x30000"]
    assert "-m" not in cmd, "the memory backend gives the size"
    assert _opt(cmd, "-append")[0].endswith("keepbook.backend=snp")


def test_tdx_command_line(tmp_path):
    launch = _launch(tmp_path)
    launch = vm.Launch(launch.image, "tdx", launch.memory_mib, launch.control_socket, launch.host_port)
    cmd = vm.tdx_command("qemu", launch, Path("/fw/OVMF.inteltdx.fd"))
    assert _opt(cmd, "-machine") == ["q35,kernel-irqchip=split,confidential-guest-support=tdx0"]
    assert _opt(cmd, "-object") == ["tdx-guest,id=tdx0"] and _opt(cmd, "-bios") == ["/fw/OVMF.inteltdx.fd"]
    assert _opt(cmd, "-append")[0].endswith("keepbook.backend=tdx")


def test_guest_memory_follows_the_keep_limit():
    assert vm.guest_memory_mib({"memory_bytes": 64 << 20}) == 64 + vm.GUEST_OVERHEAD_MIB
    assert vm.guest_memory_mib({"memory_bytes": (1 << 20) + 1}) == 2 + vm.GUEST_OVERHEAD_MIB


# ---------------------------------------------------------------------- what is missing, said


def test_availability_says_what_to_install_or_build(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no QEMU here
    ok, note = vm.availability("kvm")
    assert not ok and "QEMU is not installed" in note and "apt-get install qemu-system-x86" in note
    fake = tmp_path / vm.QEMU
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv(vm_image.ENV_DIR, str(tmp_path / "no-image"))
    ok, note = vm.availability("kvm")
    assert not ok and "keepbook image build" in note


@requires_vm
def test_a_vm_that_cannot_start_is_a_clear_error(monkeypatch, tmp_path):
    """QEMU fails at once (here: a stand-in that prints an error and exits): the create is
    refused with QEMU's words, nothing is left behind, and the manager stays usable."""
    from tests.conftest import Manager
    from tests.support.http import http

    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / vm.QEMU
    fake.write_text("#!/bin/sh\necho 'qemu-system-x86_64: -accel tcg: no such accelerator' >&2\n"
                    "exit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv(vm.ACCEL_ENV, "tcg")
    (tmp_path / "state").mkdir()
    m = Manager(tmp_path / "state", backends="kvm,nil")
    try:
        status, body = http("POST", m.url + "/v1/keeps", p.CreateKeep(backend="kvm").to_cbor(),
                            token=m.token)
        reason = p.ErrorBody.from_cbor(body).reason
        assert status == 503, (status, reason)
        assert "QEMU exited with code 1 before it could connect its control port" in reason
        assert "no such accelerator" in reason
        status, body = http("GET", m.url + "/v1/keeps", token=m.token)
        assert p.KeepList.from_cbor(body).keeps == []
        status, _ = http("POST", m.url + "/v1/keeps", p.CreateKeep(backend="nil").to_cbor(),
                         token=m.token)
        assert status == 201
    finally:
        m.stop()


# ---------------------------------------------------------------------- kvm: the image claim


def _local_image(tmp_path, code_measurement: str) -> str:
    """An image manifest (no kernel or initramfs needed: the client reads only the manifest)."""
    import json

    from keepbook.keep.shared import measurement

    d = tmp_path / "image"
    d.mkdir()
    kernel, initrd, cmdline = "11" * 32, "22" * 32, "console=ttyS0"
    digest = vm_image.image_digest(kernel, initrd, cmdline)
    (d / vm_image.CMDLINE).write_text(cmdline + "\n")
    (d / vm_image.MANIFEST).write_text(json.dumps({
        "format": vm_image.FORMAT, "digest": digest,
        "files": {vm_image.KERNEL: kernel, vm_image.INITRD: initrd},
        "keepbook": {"code_measurement": code_measurement or measurement.measurement().hex()}}))
    return digest


def _kvm_answer(image: str) -> tuple[p.AttestResponse, bytes]:
    from keepbook.keep.shared.evidence import nil

    nonce, pub = os.urandom(32), os.urandom(32)
    cfg = p.KeepConfig(backend="kvm", profile="staging", limits=dict(p.DEFAULT_LIMITS), policy=b"",
                       runtime={"image": image}, keep_id="k1")
    evidence = nil.make(p.report_data(nonce, pub, cfg.digest()))
    return p.AttestResponse(evidence_kind="nil", evidence=evidence, certs=[], hpke_suite=DEFAULT_SUITE,
                            hpke_public_key=pub, config=cfg.to_cbor(), nonce=nonce), nonce


@pytest.mark.parametrize("said, built_from, require, status, ok", [
    ("same", "", True, "verified", True),
    ("other", "", True, "failed", False),
    ("same", "00" * 48, True, "failed", False),      # the local image is stale: rebuild
    ("other", "", False, "unverified", True),         # require_measurement = false: shown only
])
def test_kvm_keep_is_compared_with_the_local_image(monkeypatch, tmp_path, said, built_from, require,
                                                   status, ok):
    digest = _local_image(tmp_path, built_from)
    monkeypatch.setenv(vm_image.ENV_DIR, str(tmp_path / "image"))
    resp, nonce = _kvm_answer(digest if said == "same" else "ab" * 32)
    result = verify_attestation(resp, _expect(nonce, "kvm", TrustPolicy(require_measurement=require)))
    claim = result.vector.get("image")
    assert claim is not None and claim.status.value == status, claim
    assert result.vector.label == "NO PROTECTION (VM)"
    assert result.ok is ok, result.vector.first_failure()
    if built_from:
        assert "rebuild it" in claim.reason


def test_kvm_keep_without_a_local_image_is_labelled_and_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv(vm_image.ENV_DIR, str(tmp_path / "none"))
    resp, nonce = _kvm_answer("ab" * 32)
    result = verify_attestation(resp, _expect(nonce, "kvm", TrustPolicy()))
    assert result.ok and result.vector.label == "NO PROTECTION (VM)"
    assert "no image here" in result.vector.get("image").reason
    refused = verify_attestation(resp, _expect(nonce, "kvm", TrustPolicy(allow_nil=False)))
    assert not refused.ok and refused.vector.get("protection").status.value == "failed"
