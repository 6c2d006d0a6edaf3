"""docs/deploy.md, followed step by step for real on loopback (issue 18): JupyterHub from PyPI,
its proxy (configurable-http-proxy) from npm, the keep manager as a hub-managed service with
TLS and the users file, three users whose servers are started through the hub's REST API, and
the doc's notebook run for each through the Jupyter server API.  Then: nobody sees, attests or
deletes another's Keep, and the quotas of the doc's users.toml hold.

The page's blocks drive the test: ``file=NAME`` blocks are written to $KEEPBOOK_DEPLOY/NAME,
``run`` blocks are run by bash as written, the ``start`` block starts the hub, and the ``cell``
blocks are the notebook.  Started once for the module (2 cores: the hub, three servers, three
kernels, the manager and its Keeps share them)."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import pytest

from keepbook.keep.shared import protocol as p
from tests.support.jupyter_api import Hub, JupyterUser, output_text

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "deploy.md"
NODE_PREFIX = ROOT / "build" / "hub-node"
USERS = ("alice", "bob", "carol")
BLOCK = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```$", re.M | re.S)
READY_S = 120.0
CELL_S = 240.0

pytestmark = pytest.mark.slow


@dataclass
class Block:
    lang: str
    tags: list[str]
    text: str

    def tag(self, name: str) -> str | None:
        """``file=NAME`` → NAME; a bare tag → ''; absent → None."""
        for t in self.tags:
            key, _, value = t.partition("=")
            if key == name:
                return value
        return None


def doc_blocks() -> list[Block]:
    return [Block(m.group(1), m.group(2).split(), m.group(3)) for m in BLOCK.finditer(DOC.read_text())]


def _proxy_dir() -> Path:
    """Where configurable-http-proxy is: on PATH, or installed from npm into build/hub-node once
    (the test's set-up; the doc installs it globally)."""
    found = shutil.which("configurable-http-proxy")
    if found:
        return Path(found).parent
    local = NODE_PREFIX / "node_modules" / ".bin"
    if not (local / "configurable-http-proxy").exists():
        if shutil.which("npm") is None:
            pytest.skip("npm is missing: JupyterHub's proxy (configurable-http-proxy) comes from npm; "
                        "install Node.js and npm to run the JupyterHub deployment test")
        NODE_PREFIX.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(NODE_PREFIX),
                            "configurable-http-proxy@5"], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"npm install configurable-http-proxy failed:\n{r.stderr[-2000:]}"
    return local


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Deployment:
    dir: Path
    env: dict[str, str]
    hub: Hub
    hub_url: str
    manager_url: str
    fingerprint: str
    log: Path
    proc: subprocess.Popen
    users: dict[str, JupyterUser] = field(default_factory=dict)
    kernels: dict[str, str] = field(default_factory=dict)

    def token(self, name: str) -> str:
        return (self.dir / "tokens" / name).read_text().strip()

    def manager(self, method: str, path: str, who: str, body: p.Message | None = None) -> tuple[int, bytes]:
        """The keep manager's API with ``who``'s token, over its TLS (the class CA)."""
        ctx = ssl.create_default_context(cafile=str(self.dir / "tls" / "ca.pem"))
        req = urllib.request.Request(self.manager_url + path, method=method,
                                     data=body.to_cbor() if body else None,
                                     headers={"Authorization": f"Bearer {self.token(who)}",
                                              "Content-Type": p.CBOR})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def run(self, name: str, cells: list[str]) -> list[list[dict]]:
        return asyncio.run(self.users[name].run_cells(self.kernels[name], cells, CELL_S))


def _bash(script: str, env: dict[str, str], cwd: Path) -> str:
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env, cwd=cwd,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"docs/deploy.md step failed:\n{script}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def _stop(proc: subprocess.Popen, deploy: Path) -> None:
    """Stop the hub (it stops the users' servers, the keep manager and its proxy); then anything
    it started that is still there (found by our deployment directory, ended by pid)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    marker = str(deploy).encode()
    for pid_dir in Path("/proc").glob("[0-9]*"):
        try:
            if marker in (pid_dir / "cmdline").read_bytes() or \
                    marker in os.readlink(pid_dir / "cwd").encode():
                os.kill(int(pid_dir.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    pytest.importorskip("jupyterhub", reason="JupyterHub is the `hub` extra: pip install -e '.[hub]' "
                        "(make test installs it)")
    proxy_dir = _proxy_dir()
    deploy = tmp_path_factory.mktemp("deploy")
    hub_port, proxy_port, hub_api_port, manager_port = _free_ports(4)
    admin = secrets.token_hex(24)
    env = {**os.environ, "KEEPBOOK_DEPLOY": str(deploy), "KEEPBOOK_HUB_PORT": str(hub_port),
           "KEEPBOOK_PROXY_API_PORT": str(proxy_port), "KEEPBOOK_HUB_API_PORT": str(hub_api_port),
           "KEEPBOOK_MANAGER_PORT": str(manager_port), "KEEPBOOK_HUB_ADMIN_TOKEN": admin,
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), str(proxy_dir),
                                    os.environ.get("PATH", "")])}
    for name in ("KEEPBOOK_MANAGER_URL", "KEEPBOOK_MANAGER_TOKEN", "KEEPBOOK_MANAGER_CA",
                 "KEEPBOOK_SIM_ROOTS", "KEEPBOOK_TRUST_POLICY", "KEEPBOOK_KNOWN_SIM_ROOTS"):
        env.pop(name, None)   # the doc's setup alone decides these

    blocks = doc_blocks()
    assert [b.tag("file") for b in blocks if b.tag("file")] == ["users.toml", "jupyterhub_config.py"]
    assert sum(1 for b in blocks if b.tag("start") is not None) == 1
    fingerprint = None
    log = deploy / "hub.log"
    proc = None
    try:
        for block in blocks:                       # the doc's steps, in its order
            if block.tag("file"):
                (deploy / block.tag("file")).write_text(block.text)
            elif block.tag("run") is not None:
                out = _bash(block.text, env, deploy)
                found = re.search(r"^\s+sim-snp\s+(sha256:[0-9a-f]{64})", out, re.M)
                fingerprint = found.group(1) if found else fingerprint
            elif block.tag("start") is not None:
                with open(log, "wb") as fh:
                    proc = subprocess.Popen(["bash", "-c", block.text], env=env, cwd=deploy,
                                            stdin=subprocess.DEVNULL, stdout=fh, stderr=fh,
                                            start_new_session=True)
        assert fingerprint, "step 4 printed no sim-snp fingerprint"
        assert proc is not None
        hub_url = f"http://127.0.0.1:{hub_port}"
        hub = Hub(hub_url, admin)
        deadline = time.monotonic() + READY_S
        while True:
            try:
                if hub.api("GET", "/")[0] == 200 and hub.api("GET", "/users/alice")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, f"the hub exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the hub did not come up:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        d = Deployment(deploy, env, hub, hub_url, f"https://127.0.0.1:{manager_port}", fingerprint,
                       log, proc)
        for name in USERS:                         # through the hub's REST API
            hub.start_server(name)
        for name in USERS:
            path = hub.wait_ready(name, READY_S)
            d.users[name] = JupyterUser(hub_url, path, name, hub.user_token(name))
            d.kernels[name] = d.users[name].start_kernel("keepbook")
        yield d
    finally:
        if proc is not None:
            _stop(proc, deploy)


def class_notebook(fingerprint: str) -> nbformat.NotebookNode:
    """The doc's step 7 as a notebook; a parameters cell gives ``fingerprint``, which the
    keepbook kernel fills into ``{fingerprint}`` (a student types it)."""
    cells = [b.text for b in doc_blocks() if b.tag("cell") is not None]
    assert cells and any("{fingerprint}" in c for c in cells)
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "keepbook", "display_name": "keepbook",
                                                           "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell(f"# Parameters\nfingerprint = {fingerprint!r}")]
    nb.cells += [nbformat.v4.new_code_cell(c.rstrip("\n")) for c in cells]
    return nb


@pytest.fixture(scope="module")
def class_run(deployment):
    """Each user saves the class notebook on their server, and runs it there (all at once)."""
    d = deployment
    for name in USERS:
        d.users[name].put_notebook("class.ipynb", class_notebook(d.fingerprint))

    async def run_all() -> list[nbformat.NotebookNode]:
        async def one(name: str) -> nbformat.NotebookNode:
            user = d.users[name]
            nb = user.get_notebook("class.ipynb")
            outputs = await user.run_cells(d.kernels[name], [c.source for c in nb.cells], CELL_S)
            for cell, out in zip(nb.cells, outputs):
                cell.outputs = [nbformat.from_dict(o) for o in out]
            user.put_notebook("class.ipynb", nb)
            return nb
        return list(await asyncio.gather(*(one(n) for n in USERS)))
    return dict(zip(USERS, asyncio.run(run_all())))


def _text(nb: nbformat.NotebookNode, starts: str) -> str:
    cell = next(c for c in nb.cells if c.source.startswith(starts))
    return output_text(cell.outputs)


def _keep_ids(text: str) -> list[str]:
    """The ids of the Keeps `%keep list` shows that are not closed."""
    rows = re.findall(r"^[* ] ([0-9a-f]{16})\s+\S+\s+\S+\s+(\S+)", text, re.M)
    return [keep_id for keep_id, state in rows if state != "closed"]


def test_each_user_accepts_the_managers_simulated_root_on_purpose(deployment, class_run) -> None:
    d = deployment
    for name, nb in class_run.items():
        cells = [c for c in nb.cells if c.cell_type == "code"]
        announced = output_text(cells[1].outputs)          # %keep new, no --manager, no token
        assert "backend sim-snp" in announced and d.manager_url in announced, (name, announced)
        assert d.fingerprint in announced and "not accepted" in announced
        first = output_text(cells[2].outputs)                # %attest: refused, how to accept
        assert "AttestationFailed" in first and "nothing was sent" in first, (name, first)
        assert f"--trust-sim-root {d.fingerprint}" in first and f'simulated_roots = ["{d.fingerprint}"]' in first
        accepted = output_text(cells[5].outputs)             # %attest after --trust-sim-root
        assert "RESULT: VERIFIED" in accepted and "SIMULATED — no hardware protection" in accepted
        assert f"SIMULATED root of the keep manager at {d.manager_url}, accepted with --trust-sim-root" \
            in accepted, (name, accepted)
        assert "inside the Keep: 45" in output_text(cells[6].outputs)
        known = d.dir / "home" / name / ".config" / "keepbook" / "known_sim_roots"
        assert f"{d.manager_url} sev-snp {d.fingerprint}" in known.read_text()   # remembered


def test_no_user_sees_attests_or_deletes_anothers_keep(deployment, class_run) -> None:
    d = deployment
    ids = {name: _keep_ids(_text(nb, "%keep list")) for name, nb in class_run.items()}
    assert all(len(v) == 1 for v in ids.values()), ids         # each sees exactly their own
    assert len({i for v in ids.values() for i in v}) == len(USERS)
    for name in USERS:
        status, body = d.manager("GET", "/v1/keeps", name)
        listed = {k.id for k in p.KeepList.from_cbor(body).keeps if k.state != "closed"}
        assert status == 200 and listed == set(ids[name]), (name, listed, ids)
        for other in USERS:
            if other == name:
                continue
            theirs = ids[other][0]
            for method, path, body_msg in (("GET", f"/v1/keeps/{theirs}", None),
                                           ("POST", f"/v1/keeps/{theirs}/attest",
                                            p.AttestRequest(nonce=os.urandom(32))),
                                           ("DELETE", f"/v1/keeps/{theirs}", None)):
                status, body = d.manager(method, path, name, body_msg)
                assert status == 404 and f"no Keep with id {theirs!r}" in p.ErrorBody.from_cbor(body).reason
    for name in USERS:   # and every Keep is still there for its owner
        status, body = d.manager("GET", f"/v1/keeps/{ids[name][0]}", name)
        assert status == 200 and p.KeepInfo.from_cbor(body).state != "closed"


def test_the_quotas_of_the_users_file_hold(deployment, class_run) -> None:
    """docs/deploy.md's users.toml: 2 Keeps and 2 GiB per user, bob 1 GiB, 4 Keeps in all.
    Each user now runs one 1 GiB Keep (step 7)."""
    d = deployment
    small = "%keep new --backend nil --memory 256MiB"
    bob = output_text(d.run("bob", [small])[0])
    assert "quota: bob may hold at most 1 GiB of Keep memory" in bob and "hold 1 GiB now" in bob, bob
    alice = output_text(d.run("alice", [small])[0])            # 4 Keeps now
    assert "backend nil" in alice and "quota" not in alice, alice
    carol = output_text(d.run("carol", [small])[0])
    assert "at most 4 Keeps in all" in carol and "4 are running" in carol, carol
    alice = output_text(d.run("alice", [small])[0])
    assert "quota: alice may run at most 2 Keeps at once" in alice and "runs 2 now" in alice, alice
    d.run("alice", ["%keep close"])                            # room again
    carol = output_text(d.run("carol", [small])[0])
    assert "backend nil" in carol and "quota" not in carol, carol
