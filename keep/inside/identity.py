"""The Keep's side of the attestation handshake: its ephemeral HPKE key, its evidence, and the
opening of the sealed provisioning message.  Inside the Keep; the private keys never leave it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from keepbook.keep.shared import certificates, protocol, sealing
from keepbook.keep.inside import dataset_opener, evidence_source
from keepbook.keep.shared import audit_format, dataset_format


@dataclass
class KeepKeys:
    """The Keep's long-lived keys, made at start: one HPKE dataset key per suite (data owners
    seal to it) and the audit log's Ed25519 signing key.  Public halves go into the attested
    config (``KeepConfig.keys``)."""

    dataset: dict[str, tuple[Any, bytes]]
    audit: ed25519.Ed25519PrivateKey

    @classmethod
    def generate(cls) -> "KeepKeys":
        return cls(dataset=dataset_opener.keep_dataset_keys(), audit=ed25519.Ed25519PrivateKey.generate())

    def public(self) -> dict[str, bytes]:
        out = {dataset_format.dataset_key_name(s): pub for s, (_, pub) in self.dataset.items()}
        out[audit_format.AUDIT_KEY] = self.audit.public_key().public_bytes_raw()
        return out


@dataclass
class Attestation:
    nonce: bytes
    report_data: bytes
    hpke_private: Any
    suite: str


#: how many recent attestations can still be used to provision (several parties attest one
#: Keep: the analyst, then the data owner before sealing — the owner's must not void the
#: analyst's pending provisioning)
RECENT_ATTESTATIONS = 8


class KeepIdentity:
    """Holds the config the Keep was started with and the recent attestations it can be
    provisioned under.  Each ``attest`` makes a new HPKE key; a sealed provisioning opens with
    the key of the attestation it was sealed to (and only once: provisioning drops them all).
    When each may happen (provision once, after an attestation) is the handshake state
    machine's decision (:mod:`keepbook.keep.shared.handshake`), made before these are called."""

    def __init__(self, keep_id: str, config: protocol.KeepConfig, suite: str = sealing.DEFAULT_SUITE):
        self.keep_id = keep_id
        self.config = config
        self.config_cbor = config.to_cbor()
        self.config_digest = config.digest()
        self.suite = suite
        self.recent: list[Attestation] = []  # newest last

    def attest(self, req: protocol.AttestRequest) -> protocol.AttestResponse:
        priv, pub = sealing.generate(self.suite)
        rd = protocol.report_data(req.nonce, pub, self.config_digest)
        kind, evidence, certs = evidence_source.get_evidence(self.config.backend, rd)
        self.recent = [*self.recent[-(RECENT_ATTESTATIONS - 1):], Attestation(req.nonce, rd, priv, self.suite)]
        return protocol.AttestResponse(evidence_kind=kind, evidence=evidence, certs=certs,
                                       hpke_suite=self.suite, hpke_public_key=pub,
                                       config=self.config_cbor, nonce=req.nonce)

    def open_provision(self, req: protocol.ProvisionRequest) -> tuple[protocol.Sealed, Any, bytes]:
        """Open the sealed {TLS key, client certificate}; return it with the loaded key and the
        one-use server certificate (DER) built from that key."""
        assert self.recent, "the handshake allows provision only after an attestation"
        plain = None
        for att in reversed(self.recent):
            try:
                plain = sealing.open_sealed(att.suite, att.hpke_private, req.sealed,
                                            protocol.provision_info(att.report_data))
                break
            except sealing.SealingError as exc:
                failure = exc
        if plain is None:
            raise protocol.ProtocolError(str(failure), 400) from None
        sealed = protocol.Sealed.from_cbor(plain)
        try:
            key = serialization.load_der_private_key(sealed.tls_key, password=None)
            x509.load_der_x509_certificate(sealed.client_cert)
        except ValueError as exc:
            raise protocol.ProtocolError(f"sealed provisioning holds an unusable key or "
                                         f"certificate: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise protocol.ProtocolError("the one-use TLS key must be an EC key")
        cert = certificates.self_signed(key, f"keepbook Keep {self.keep_id}")
        self.recent = []  # the HPKE keys have done their one job
        return sealed, key, cert
