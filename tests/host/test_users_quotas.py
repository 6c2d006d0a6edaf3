"""A class or a team on one keep manager (issue 18): the users file (``--users``), per-user
quotas refused with the limit and the current use, and the simulated roots the manager
announces (printed at start, carried by ``contracts``)."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from keepbook.keep.host import quotas, users
from keepbook.keep.shared import protocol as p
from keepbook.keep.shared.evidence.certs import format_fingerprint, spki_sha256
from tests.conftest import Manager
from tests.support.http import http

MiB = 1024 * 1024
BOB_TOKEN = "bob-" + os.urandom(12).hex()

USERS = f"""
max_keeps_total = 3

[defaults]
max_memory = "4GiB"

[[user]]
name = "alice"
token_file = "tokens/alice"
max_keeps = 1

[[user]]
name = "bob"
token_sha256 = "{hashlib.sha256(BOB_TOKEN.encode()).hexdigest()}"
max_memory = "1GiB"

[[user]]
name = "carol"
token_file = "tokens/carol"
"""


def reason(body: bytes) -> str:
    return p.ErrorBody.from_cbor(body).reason


# ---------------------------------------------------------------------- the users file


def test_users_file_reads_names_tokens_and_quotas(tmp_path: Path) -> None:
    roster = users.parse_users(USERS, "users.toml", tmp_path)
    by_name = {u.name: u for u in roster.principals}
    assert roster.max_keeps_total == 3
    assert by_name["alice"].quota == quotas.Quota(max_keeps=1, max_memory=4 * 1024**3)
    assert by_name["bob"].quota == quotas.Quota(max_keeps=None, max_memory=1024**3)
    alice_file = tmp_path / "tokens" / "alice"
    assert alice_file.stat().st_mode & 0o777 == 0o600       # made, private
    assert by_name["alice"].digest == users.token_digest(alice_file.read_text().strip())
    assert roster.by_digest(users.token_digest(BOB_TOKEN)).name == "bob"
    assert roster.by_digest(users.token_digest("nobody")) is None
    again = users.parse_users(USERS, "users.toml", tmp_path)   # the made token is kept
    assert {u.digest for u in again.principals} == {u.digest for u in roster.principals}


@pytest.mark.parametrize("text,why", [
    ("[[user]]\nname = 'a'\n", "exactly one of token_file"),
    ("[[user]]\nname = 'a'\ntoken_file = 't'\ntoken_sha256 = '" + "0" * 64 + "'\n", "exactly one of"),
    ("[[user]]\nname = 'a'\ntoken_sha256 = 'abc'\n", "64 hex digits"),
    ("[[user]]\nname = 'a b'\ntoken_file = 't'\n", "name must be"),
    ("[[user]]\nname = 'a'\ntoken_file = 't'\nmax_keeps = -1\n", "max_keeps must be a whole number"),
    ("[[user]]\nname = 'a'\ntoken_file = 't'\nmax_keeps = true\n", "max_keeps must be a whole number"),
    ("[[user]]\nname = 'a'\ntoken_file = 't'\nmax_memory = 'lots'\n", "max_memory: not a size"),
    ("[[user]]\nname = 'a'\ntoken_file = 't'\nquota = 3\n", "unknown key(s) quota"),
    ("[[user]]\nname = 'a'\ntoken_file = 't'\n[[user]]\nname = 'a'\ntoken_file = 'u'\n", "listed twice"),
    ("[[user]]\nname = 'a'\ntoken_file = 't'\n[[user]]\nname = 'b'\ntoken_file = 't'\n", "same token"),
    ("max_keeps_total = 'x'\n[[user]]\nname = 'a'\ntoken_file = 't'\n", "max_keeps_total must be"),
    ("[defaults]\nmax_cpu = 1\n[[user]]\nname = 'a'\ntoken_file = 't'\n", "[defaults] may hold only"),
    ("teachers = 1\n", "unknown key(s) teachers"),
    ("", "no users"),
    ("[[user]\n", "not valid TOML"),
])
def test_users_file_errors_name_the_entry_and_key(tmp_path: Path, text: str, why: str) -> None:
    with pytest.raises(users.UsersFileError) as exc:
        users.parse_users(text, "users.toml", tmp_path)
    assert why in str(exc.value) and "users.toml" in str(exc.value)


def test_keepmgr_refuses_a_bad_users_file_at_start(tmp_path: Path) -> None:
    (tmp_path / "users.toml").write_text("[[user]]\nname = 'a'\n")
    r = subprocess.run([sys.executable, "-m", "keepbook.keep.host.keepmgr", "--port", "0",
                        "--state-dir", str(tmp_path / "s"), "--users", str(tmp_path / "users.toml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "exactly one of token_file" in r.stderr


# ---------------------------------------------------------------------- quotas (pure)


def test_refusal_names_the_limit_and_the_current_use() -> None:
    q = quotas.Quota(max_keeps=2, max_memory=1024 * MiB)
    assert quotas.refusal("ann", q, quotas.Usage(1, 512 * MiB), 512 * MiB, 5, 10, "f") is None
    why = quotas.refusal("ann", q, quotas.Usage(2, 512 * MiB), 1 * MiB, 5, 10, "f")
    assert "at most 2 Keeps" in why and "max_keeps" in why and "runs 2 now" in why
    why = quotas.refusal("ann", q, quotas.Usage(1, 768 * MiB), 512 * MiB, 5, 10, "f")
    assert "1 GiB" in why and "768 MiB" in why and "512 MiB" in why and "max_memory" in why
    why = quotas.refusal("ann", quotas.Quota(), quotas.Usage(0, 0), MiB, 10, 10, "f")
    assert "at most 10 Keeps in all" in why and "max_keeps_total" in why and "10 are running" in why
    assert quotas.refusal("ann", quotas.Quota(), quotas.Usage(50, 10**12), MiB, 99, None, "f") is None


# ---------------------------------------------------------------------- a real manager


@pytest.fixture(scope="module")
def class_manager(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("class")
    (tmp / "users.toml").write_text(USERS)
    m = Manager(tmp, backends="nil,sim-snp", extra=["--users", str(tmp / "users.toml")])
    m.tokens = {"alice": (tmp / "tokens" / "alice").read_text().strip(), "bob": BOB_TOKEN,
                "carol": (tmp / "tokens" / "carol").read_text().strip()}
    yield m
    m.stop()


def create(m, who: str, memory: int = 256 * MiB) -> tuple[int, bytes]:
    limits = {**p.DEFAULT_LIMITS, "memory_bytes": memory}
    return http("POST", m.url + "/v1/keeps", p.CreateKeep(backend="nil", limits=limits).to_cbor(),
                token=m.tokens[who])


def delete(m, who: str, keep_id: str) -> None:
    status, _ = http("DELETE", f"{m.url}/v1/keeps/{keep_id}", token=m.tokens[who])
    assert status == 200


def test_quotas_per_user_and_in_all(class_manager) -> None:
    m = class_manager
    assert m.token is None          # only users from the file: no default token was made
    made: list[tuple[str, str]] = []
    try:
        status, body = create(m, "alice")
        assert status == 201
        made.append(("alice", p.KeepInfo.from_cbor(body).id))
        status, body = create(m, "alice")                 # Keeps per user
        assert status == 429
        assert "alice may run at most 1 Keep at once" in reason(body) and "runs 1 now" in reason(body)

        status, body = create(m, "bob", 768 * MiB)
        assert status == 201
        made.append(("bob", p.KeepInfo.from_cbor(body).id))
        status, body = create(m, "bob", 512 * MiB)        # memory per user
        assert status == 429
        why = reason(body)
        assert "bob may hold at most 1 GiB" in why and "hold 768 MiB now" in why and "512 MiB" in why

        status, body = create(m, "carol")
        assert status == 201
        made.append(("carol", p.KeepInfo.from_cbor(body).id))
        status, body = create(m, "carol")                 # Keeps in all
        assert status == 429
        assert "at most 3 Keeps in all" in reason(body) and "3 are running" in reason(body)

        who, keep_id = made.pop(0)                        # alice closes hers: room again
        delete(m, who, keep_id)
        status, body = create(m, "carol")
        assert status == 201, reason(body)
        made.append(("carol", p.KeepInfo.from_cbor(body).id))
    finally:
        for who, keep_id in made:
            delete(m, who, keep_id)


def test_two_creates_at_once_cannot_both_pass_a_quota(class_manager) -> None:
    m = class_manager
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: create(m, "alice"), range(4)))
    ok = [p.KeepInfo.from_cbor(b).id for s, b in answers if s == 201]
    try:
        assert len(ok) == 1, [s for s, _ in answers]
        assert all(s == 429 and "max_keeps" in reason(b) for s, b in answers if s != 201)
    finally:
        for keep_id in ok:
            delete(m, "alice", keep_id)


def test_the_refusal_is_logged_without_content(class_manager) -> None:
    status, _ = create(class_manager, "alice", 8 * 1024**3)   # over alice's 4 GiB
    assert status == 429
    log = class_manager.log.read_text()
    assert '"event": "quota-refused"' in log and '"user": "alice"' in log


# ---------------------------------------------------------------------- announced roots


def test_contracts_carry_the_simulated_root_the_manager_printed(class_manager) -> None:
    m = class_manager
    status, body = http("GET", m.url + "/v1/contracts", token=m.tokens["carol"])
    backends = {b.name: b for b in p.Contracts.from_cbor(body).backends}
    assert backends["nil"].sim_root is None
    root = backends["sim-snp"].sim_root
    assert root is not None and format_fingerprint(spki_sha256(root)) == m.sim_roots["sim-snp"]
    printed = m.stderr.read_text()        # the manager's stdout and stderr
    assert m.sim_roots["sim-snp"] in printed and "SIMULATED ARK" in printed


def test_show_sim_roots_prints_them_and_makes_them_if_missing(tmp_path: Path) -> None:
    env = {**os.environ, "KEEPBOOK_SIM_ROOTS": str(tmp_path / "roots")}
    r = subprocess.run([sys.executable, "-m", "keepbook.keep.host.keepmgr", "--show-sim-roots",
                        "--backends", "nil,sim-snp"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    der = (tmp_path / "roots" / "sev-snp" / "ark.der").read_bytes()
    assert f"sim-snp  {format_fingerprint(spki_sha256(der))}" in r.stdout
    keys = list((tmp_path / "roots").rglob("*.key"))
    assert keys and all((f.stat().st_mode & 0o077) == 0 for f in keys)   # made private
