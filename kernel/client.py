"""One Keep as the client sees it: create, attest, provision, then the attested channel.

The client's copy of the handshake state machine (:mod:`keepbook.keep.shared.handshake`)
decides what may happen when: nothing is sealed to a Keep — no channel key, no cell, module or
dataset — before its verifier accepted the Keep's evidence under the user's trust policy
(DESIGN.md §8, invariant 1), because the machine only allows ``provision`` from VERIFIED and
every channel request needs PROVISIONED.  Runs on the user's machine.
"""

from __future__ import annotations

import inspect
import os
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, AsyncIterator, Awaitable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from keepbook.keep.shared import certificates, protocol, sealing
from keepbook.keep.shared.handshake import Handshake, Role, State
from keepbook.kernel.attestation import AttestationResult, ExpectationBuilder, verify_attestation
from keepbook.kernel.channel import Channel, ChannelRefused, Endpoint, KeepError
from keepbook.kernel import sim_trust as sim_trust_mod
from keepbook.kernel.manager_client import ManagerClient
from keepbook.kernel.trust_policy import TrustPolicy

__all__ = ["KeepError", "AttestationRefused", "ChannelRefused", "KeepSession", "ManagerClient"]


class AttestationRefused(KeepError):
    def __init__(self, result: AttestationResult):
        self.result = result
        super().__init__("attestation failed — nothing was sent to this Keep. "
                         f"Failing claim: {result.vector.first_failure()}")


@dataclass
class KeepSession:
    manager: ManagerClient
    requested: protocol.CreateKeep
    info: protocol.KeepInfo
    policy: TrustPolicy
    attestation: AttestationResult | None = None
    channel: Channel | None = None
    cells_run: int = 0
    created_at: float = field(default_factory=time.time)
    handshake: Handshake = field(default_factory=lambda: Handshake(Role.CLIENT))
    #: the simulated roots a sim-* Keep may chain to (None: this installation's own)
    sim_trust: sim_trust_mod.SimRootTrust | None = None

    @classmethod
    async def create(cls, manager: ManagerClient, req: protocol.CreateKeep, policy: TrustPolicy,
                     sim_trust: sim_trust_mod.SimRootTrust | None = None) -> "KeepSession":
        hs = Handshake(Role.CLIENT)
        hs.send(req)
        info = await manager.create(req)
        hs.receive(info)
        return cls(manager=manager, requested=req, info=info, policy=policy, handshake=hs,
                   sim_trust=sim_trust)

    @property
    def id(self) -> str:
        return self.info.id

    def expectation(self, nonce: bytes) -> ExpectationBuilder:
        """What this client expects of the Keep it created: what it asked for, under its id."""
        builder = (ExpectationBuilder().nonce(nonce).trust_policy(self.policy)
                   .requested(self.requested).keep_id(self.id))
        return builder.sim_trust(self.sim_trust) if self.sim_trust is not None else builder

    async def attest(self) -> AttestationResult:
        """Fresh evidence with a fresh nonce, verified.  Raises :class:`AttestationRefused`; a
        Keep that fails a fresh attestation after it was provisioned is not used again."""
        nonce = os.urandom(32)
        resp = await self._ask(protocol.AttestRequest(nonce=nonce), self.manager.attest(self.id, nonce))
        result = verify_attestation(resp, self.expectation(nonce).build())
        self.attestation = result
        if not result.ok:
            if self.handshake.state is State.REATTESTED:
                self.handshake.fail(f"a fresh attestation failed: {result.vector.first_failure()}")
                await self._drop_channel()
            raise AttestationRefused(result)
        self.handshake.verified()
        self._remember_sim_root(result)
        return result

    def _remember_sim_root(self, result: AttestationResult) -> None:
        """A simulated root the user accepted, now that a Keep attested with it, is remembered
        for this manager (a file that cannot be written only means being asked again)."""
        sim = self.sim_trust
        digest = sim.to_remember(result.vector) if sim is not None else None
        if sim is None or digest is None or sim.manager is None:
            return
        try:
            known = sim_trust_mod.remember(sim.manager, sim.kind, digest, sim.explicit[digest])
        except (OSError, sim_trust_mod.KnownRootsError):
            return
        self.sim_trust = replace(sim, remembered=known)

    async def ensure_channel(self) -> Channel:
        """Attest (unless the latest evidence verified) and provision the one-use channel."""
        if self.channel is not None:
            return self.open_channel("use the attested channel")
        if self.handshake.state is not State.VERIFIED:
            await self.attest()
        att = self.attestation
        assert att is not None and att.report_data is not None
        tls_key = ec.generate_private_key(ec.SECP256R1())
        client_key = ec.generate_private_key(ec.SECP256R1())
        client_cert = certificates.self_signed(client_key, f"keepbook client {uuid.uuid4().hex[:8]}")
        plaintext = protocol.Sealed(
            tls_key=tls_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()),
            client_cert=client_cert).to_cbor()
        try:
            sealed = sealing.seal(att.response.hpke_suite, att.response.hpke_public_key, plaintext,
                                  protocol.provision_info(att.report_data))
        except sealing.SealingError as exc:
            raise KeepError(f"hpke_suite: cannot seal the channel key to this Keep: {exc}") from None
        # LocalProtocolError unless the evidence verified
        resp = await self._ask(protocol.ProvisionRequest(sealed=sealed),
                               self.manager.provision(self.id, sealed))
        try:
            self.channel = self._open_channel(resp, tls_key, client_key, client_cert)
        except KeepError as exc:
            self.handshake.fail(str(exc))
            raise
        return self.channel

    async def _ask(self, request: protocol.Message, answer: Awaitable[Any]) -> Any:
        """One request through the keep manager, with the handshake told what is sent and what
        came back (or that nothing did)."""
        try:
            self.handshake.send(request)
        except BaseException:
            if inspect.iscoroutine(answer):
                answer.close()  # never started: nothing was sent
            raise
        try:
            resp = await answer
            self.handshake.receive(resp)
        except BaseException:
            self.handshake.abandon()
            raise
        return resp

    @staticmethod
    def _open_channel(resp: protocol.ProvisionResponse, tls_key: Any, client_key: Any,
                      client_cert: bytes) -> Channel:
        """Check what the host relayed (the certificate carries our key; the endpoint is an
        https host and port) before anything is sent on it."""
        try:
            got = certificates.spki(resp.server_cert)
        except ValueError:
            raise ChannelRefused("pinning: the endpoint certificate the host relayed does not "
                                 "parse; refusing to connect") from None
        if got != certificates.key_spki(tls_key):
            raise ChannelRefused("pinning: the endpoint certificate does not carry the key sealed "
                                 "to the Keep — the host substituted its own; refusing to connect")
        return Channel(Endpoint.parse(resp.endpoint), resp.server_cert, client_key, client_cert)

    def open_channel(self, doing: str) -> Channel:
        """The channel, if this Keep may be used now (provisioned, every attestation verified)."""
        try:
            self.handshake.require([State.PROVISIONED, State.REATTESTING], doing)
        except protocol.ProtocolError as exc:
            raise KeepError(f"Keep {self.id}: {exc.reason}") from None
        assert self.channel is not None
        return self.channel

    async def run(self, req: protocol.RunRequest) -> AsyncIterator[protocol.Event]:
        await self.ensure_channel()
        channel = self.open_channel("run a cell")
        self.cells_run += 1
        async for event in channel.run(req):
            yield event

    async def _drop_channel(self) -> None:
        if self.channel is not None:
            await self.channel.close()
            self.channel = None

    async def close(self) -> None:
        if self.channel is not None and self.handshake.channel_open:
            try:
                await self.channel.request("close", timeout=2.0)
            except KeepError:
                pass
        await self._drop_channel()
        self.handshake.close("closed by this notebook")
        try:
            await self.manager.delete(self.id)
        except KeepError:
            pass
