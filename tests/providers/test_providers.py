"""Evidence providers against faithful fakes (no TEE on this machine): configfs-tsm, /dev/sev-guest,
Gramine /dev/attestation — each serving the real vectors; plus the simulated provider."""

from __future__ import annotations

import ctypes
import datetime
import errno
import os
import struct
from pathlib import Path

import pytest

from keepbook.keep.shared.evidence.certs import load_certs
from keepbook.keep.shared.evidence.dcap_verify import SgxVerifier, TdxVerifier
from keepbook.keep.shared.evidence.snp_verify import SnpVerifier
from keepbook.keep.inside import providers
from keepbook.keep.inside.providers import sev_guest
from keepbook.keep.inside.providers.common import ProviderError, build_cert_table, parse_cert_table
from keepbook.keep.inside.providers.configfs_tsm import ConfigfsTsmProvider
from keepbook.keep.shared.evidence import simulated_roots

VECTORS = Path(os.environ.get("KEEPBOOK_VECTORS", Path(__file__).resolve().parents[2].parent / "shared" / "vectors"))


@pytest.fixture(scope="module")
def vec():
    if not (VECTORS / "PROVENANCE.md").exists():
        pytest.skip(f"real attestation vectors not found at {VECTORS} (set KEEPBOOK_VECTORS)")

    def read(rel: str) -> bytes:
        d = (VECTORS / rel).read_bytes()
        return bytes.fromhex(d.decode()) if rel.endswith(".hex") else d
    return read


@pytest.fixture(autouse=True)
def _sim_roots(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("KEEPBOOK_SIM_ROOTS", str(tmp_path_factory.getbasetemp() / "sim-roots"))
    from keepbook.keep.inside.simulated_tee import vendor
    from keepbook.keep.shared.evidence import simulated_roots
    vendor.reset_cache()


def snp_table(vec, report: str, key: str, key_cert: str, ask_ark: str) -> tuple[bytes, bytes]:
    """A report and the certificate table its host serves: VCEK or VLEK, ASK (ASVK), ARK."""
    ask, ark = load_certs(vec(ask_ark))
    return vec(report), build_cert_table({key: vec(key_cert), "ask": ask, "ark": ark})


def snp_milan(vec):
    return snp_table(vec, "snp/virtee-sev__tests_certs_data_report_milan.hex", "vcek",
                     "snp/virtee-sev__tests_certs_data_vcek_milan.der",
                     "snp/go-sev-guest__verify_trust_ask_ark_milan.pem")


# -- configfs-tsm ---------------------------------------------------------------------------------

class FakeConfigfs(ConfigfsTsmProvider):
    """Kernel semantics on a plain directory: mkdir creates the attribute files, writing inblob
    bumps generation and produces outblob/auxblob; ``intruder`` simulates a concurrent writer."""

    def __init__(self, *, outblob: bytes, auxblob: bytes, provider: str, intruder: int = 0, **kw):
        super().__init__(**kw)
        self.outblob, self.auxblob, self.provider, self.intruder = outblob, auxblob, provider, intruder
        self.inblobs: list[bytes] = []

    def _mkdir(self, p):
        os.mkdir(p)
        for name, data in {"generation": b"0\n", "provider": self.provider.encode() + b"\n",
                           "outblob": b"", "auxblob": b"", "inblob": b"", "privlevel": b"0\n",
                           "privlevel_floor": b"0\n"}.items():
            (p / name).write_bytes(data)

    def _rmdir(self, p):
        for f in p.iterdir():
            f.unlink()
        os.rmdir(p)

    def _write(self, p, data):
        if p.name == "inblob":
            if len(data) > 64:
                raise OSError(errno.EINVAL, "inblob too large")
            self.inblobs.append(data)
            g = int((p.parent / "generation").read_text()) + 1 + (1 if self.intruder > 0 else 0)
            self.intruder -= 1
            (p.parent / "generation").write_text(f"{g}\n")
            (p.parent / "outblob").write_bytes(self.outblob)
            (p.parent / "auxblob").write_bytes(self.auxblob)
        super()._write(p, data)


def _tsm_root(tmp_path) -> Path:
    (tmp_path / ConfigfsTsmProvider.BASE).mkdir(parents=True)
    return tmp_path


@pytest.mark.vectors
def test_configfs_tsm_snp_real_vector(tmp_path, vec):
    report, table = snp_milan(vec)
    p = FakeConfigfs(root=_tsm_root(tmp_path), outblob=report, auxblob=table, provider="sev_guest",
                     expect="sev-snp")
    rd = os.urandom(64)
    kind, ev, certs = p.get_evidence(rd)
    assert kind == "sev-snp" and ev == report and len(certs) == 3
    assert p.inblobs == [rd]
    assert not any((tmp_path / ConfigfsTsmProvider.BASE).iterdir())   # entry removed
    assert SnpVerifier().verify(ev, certs=certs).ok


@pytest.mark.vectors
def test_configfs_tsm_tdx_real_vector(tmp_path, vec):
    quote = vec("tdx/dcap-qvl__sample_tdx_quote")
    p = FakeConfigfs(root=_tsm_root(tmp_path), outblob=quote, auxblob=b"", provider="tdx_guest")
    kind, ev, certs = p.get_evidence(bytes(64))
    assert kind == "tdx" and ev == quote and certs == []
    assert TdxVerifier().verify(ev).ok


@pytest.mark.vectors
@pytest.mark.parametrize("provider", ["arm_cca_guest", "arm_cca"])
def test_configfs_tsm_cca_real_vector(tmp_path, vec, provider):
    """An Arm CCA realm (hardware ``cca`` backend) through configfs-tsm: the token is the outblob,
    no auxblob; the verifier accepts it with the platform key the user supplies."""
    from keepbook.keep.shared.evidence.cca_verify import CcaVerifier
    from keepbook.keep.shared.evidence.public_keys import load_public_keys
    c = "cca/ccatoken__test_common.go__"
    token = vec(c + "testGoodCCAToken.cbor")
    chosen = providers.get_provider("cca", root=_tsm_root(tmp_path))
    assert isinstance(chosen, ConfigfsTsmProvider) and chosen.expect == "cca"
    p = FakeConfigfs(root=tmp_path, outblob=token, auxblob=b"", provider=provider, expect="cca")
    rd = os.urandom(64)
    kind, ev, certs = p.get_evidence(rd)
    assert kind == "cca" and ev == token and certs == [] and p.inblobs == [rd]
    from keepbook.keep.shared.evidence.trust import ReferenceValues
    iak = load_public_keys(vec(c + "testIAK.public.jwk.json"))
    assert CcaVerifier().verify(ev, reference=ReferenceValues(platform_keys=iak)).ok
    wrong = FakeConfigfs(root=_tsm_root(tmp_path / "w"), outblob=token, auxblob=b"", provider=provider,
                         expect="tdx")
    with pytest.raises(ProviderError, match="this machine's TEE is cca, not tdx"):
        wrong.get_evidence(rd)


def snp_vlek(vec):
    """Trustee's VLEK-signed report; the ASVK travels in the table's ASK slot."""
    return snp_table(vec, "snp/trustee__deps_verifier_test_data_snp_test-vlek-report.bin", "vlek",
                     "snp/trustee__deps_verifier_test_data_snp_test-vlek.der",
                     "snp/go-sev-guest__verify_trust_ask_ark_milan_vlek.pem")


IN_VLEK_LIFE = datetime.datetime(2025, 6, 1, tzinfo=datetime.timezone.utc)   # the VLEK expired 2025-12-10


@pytest.mark.vectors
def test_configfs_tsm_snp_vlek_certificate_table(tmp_path, vec):
    report, table = snp_vlek(vec)
    p = FakeConfigfs(root=_tsm_root(tmp_path), outblob=report, auxblob=table, provider="sev_guest",
                     expect="sev-snp")
    kind, ev, certs = p.get_evidence(os.urandom(64))
    assert kind == "sev-snp" and len(certs) == 3
    tv = SnpVerifier().verify(ev, certs=certs, at=IN_VLEK_LIFE)
    assert tv.ok, tv.to_text()
    assert "SEV-VLEK" in tv.get("chain").reason
    from keepbook.keep.shared.evidence import carried
    for name in carried.required_on_hardware("sev-snp"):        # what a hardware Keep must show
        assert tv.get(name).status.value == "verified", name


@pytest.mark.vectors
def test_sev_guest_vlek_certificate_table(tmp_path, vec):
    report, table = snp_vlek(vec)
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "sev-guest").write_bytes(b"")
    p = sev_guest.SevGuestProvider(root=tmp_path, ioctl=FakeSevGuest(report, table))
    kind, ev, certs = p.get_evidence(os.urandom(64))
    assert SnpVerifier().verify(ev, certs=certs, at=IN_VLEK_LIFE).ok


def test_configfs_tsm_generation_race(tmp_path):
    p = FakeConfigfs(root=_tsm_root(tmp_path), outblob=b"x", auxblob=b"", provider="tdx_guest", intruder=1)
    kind, ev, _ = p.get_evidence(bytes(64))       # one race → retried
    assert len(p.inblobs) == 2
    p = FakeConfigfs(root=_tsm_root(tmp_path / "b"), outblob=b"x", auxblob=b"", provider="tdx_guest",
                     intruder=10)
    with pytest.raises(ProviderError, match="another process"):
        p.get_evidence(bytes(64))


def test_configfs_tsm_wrong_tee_and_bad_input(tmp_path):
    p = FakeConfigfs(root=_tsm_root(tmp_path), outblob=b"x", auxblob=b"", provider="tdx_guest", expect="sev-snp")
    with pytest.raises(ProviderError, match="not sev-snp"):
        p.get_evidence(bytes(64))
    with pytest.raises(ProviderError, match="64 bytes"):
        p.get_evidence(bytes(10))


# -- /dev/sev-guest -----------------------------------------------------------------------------

def test_sev_guest_struct_layout():
    assert sev_guest.REPORT_REQ.size == 96
    assert sev_guest.EXT_REPORT_REQ.size == 112
    assert sev_guest.GUEST_REQ.size == 32
    assert sev_guest.SNP_GET_REPORT == 0xC0205300
    assert sev_guest.SNP_GET_EXT_REPORT == 0xC0205302


class FakeSevGuest:
    """The kernel side of SNP_GET_EXT_REPORT: reads the request from the caller's memory, writes
    MSG_REPORT_RSP and the certificate table back, like the sev-guest driver."""

    def __init__(self, report: bytes, table: bytes):
        self.report, self.table, self.calls = report, table, []

    def __call__(self, fd, request, arg, mutate):
        assert request == sev_guest.SNP_GET_EXT_REPORT and mutate
        ver, req_addr, resp_addr, _, _ = sev_guest.GUEST_REQ.unpack(bytes(arg))
        raw = ctypes.string_at(req_addr, sev_guest.EXT_REPORT_REQ.size)
        inner, certs_addr, certs_len = sev_guest.EXT_REPORT_REQ.unpack(raw)
        user_data, vmpl = sev_guest.REPORT_REQ.unpack(inner)
        self.calls.append((user_data, vmpl, certs_len))
        if certs_len < len(self.table):
            need = -(-len(self.table) // 4096) * 4096
            ctypes.memmove(req_addr + 104, struct.pack("<I", need), 4)
            arg[:] = sev_guest.GUEST_REQ.pack(ver, req_addr, resp_addr, 0, sev_guest.VMM_ERR_INVALID_LEN)
            raise OSError(errno.EIO, "Input/output error")
        resp = sev_guest.MSG_REPORT_RSP.pack(0, len(self.report)) + self.report
        ctypes.memmove(resp_addr, resp, len(resp))
        ctypes.memmove(certs_addr, self.table, len(self.table))
        return 0


@pytest.mark.vectors
def test_sev_guest_ext_report_real_vector(tmp_path, vec):
    report, table = snp_milan(vec)
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "sev-guest").write_bytes(b"")
    fake = FakeSevGuest(report, table + bytes(20000))        # forces the INVALID_LEN retry
    p = sev_guest.SevGuestProvider(root=tmp_path, ioctl=fake, certs_len=4096)
    rd = os.urandom(64)
    kind, ev, certs = p.get_evidence(rd)
    assert kind == "sev-snp" and ev == report and len(certs) == 3
    assert [c[0] for c in fake.calls] == [rd, rd] and fake.calls[1][2] >= len(table) + 20000
    assert SnpVerifier().verify(ev, certs=certs).ok


def test_sev_guest_firmware_error(tmp_path):
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "sev-guest").write_bytes(b"")

    def failing(fd, request, arg, mutate):
        arg[:] = sev_guest.GUEST_REQ.pack(1, 0, 0, 0x16, 0)
        raise OSError(errno.EIO, "Input/output error")
    with pytest.raises(ProviderError, match="firmware error 0x16"):
        sev_guest.SevGuestProvider(root=tmp_path, ioctl=failing).get_evidence(bytes(64))


def test_cert_table_round_trip():
    t = build_cert_table({"vcek": b"A" * 10, "ask": b"B" * 5})
    assert parse_cert_table(t) == [b"A" * 10, b"B" * 5]
    assert parse_cert_table(t + bytes(100)) == [b"A" * 10, b"B" * 5]
    with pytest.raises(ProviderError):
        parse_cert_table(t[:24] + struct.pack("<16sII", bytes(16), 0, 0)[:0] + b"\x01" * 30)


# -- Gramine -------------------------------------------------------------------------------------

@pytest.mark.vectors
def test_gramine_real_vector(tmp_path, vec):
    d = tmp_path / "dev" / "attestation"
    d.mkdir(parents=True)
    quote = vec("sgx/dcap-qvl__sample_sgx_quote")
    (d / "quote").write_bytes(quote)
    (d / "attestation_type").write_text("dcap")
    rd = os.urandom(64)
    kind, ev, certs = providers.get_evidence("sgx", rd, root=tmp_path)
    assert (d / "user_report_data").read_bytes() == rd
    assert kind == "sgx" and ev == quote and certs == []
    assert SgxVerifier().verify(ev).ok
    (d / "attestation_type").write_text("epid")
    with pytest.raises(ProviderError, match="dcap"):
        providers.get_evidence("sgx", rd, root=tmp_path)


# -- dispatch and simulated ---------------------------------------------------------------------

def test_dispatch_errors(tmp_path):
    for backend in ("snp", "tdx", "sgx", "cca"):
        with pytest.raises(ProviderError, match="not|no "):
            providers.get_evidence(backend, bytes(64), root=tmp_path)
    with pytest.raises(ProviderError, match="Arm CCA realm"):
        providers.get_evidence("cca", bytes(64), root=tmp_path)


@pytest.mark.parametrize("backend", ["sim-snp", "sim-tdx", "sim-sgx", "sim-cca"])
def test_simulated_provider(backend):
    from keepbook.keep.shared.evidence import registry
    rd = os.urandom(64)
    kind, ev, certs = providers.get_evidence(backend, rd)
    tv = registry.get_verifier(kind).verify(ev, certs=certs,
                                            simulated_roots=simulated_roots.simulated_root_digests(kind))
    assert tv.ok and tv.protection == "simulated"
