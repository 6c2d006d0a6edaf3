"""Fixtures for the hostile-world suite (issue 8): a real keep manager, the keepbook kernelspec,
and the ``stress`` marker — stress-sized tests run only under ``make stress``
(``KEEPBOOK_STRESS=1``); their quick siblings run in ``make test``."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import Manager


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "stress: stress-sized; runs only under `make stress` "
                                       "(KEEPBOOK_STRESS=1)")


@pytest.fixture(scope="session", autouse=True)
def keepbook_kernelspec():
    """Kernel-driven tests start the installed "keepbook" kernelspec; make sure it points here."""
    from keepbook.kernel.kernelspec import install

    install(prefix=sys.prefix)


@pytest.fixture(scope="module")
def mgr(tmp_path_factory):
    """A real keep manager (nil and sim-snp) shared by one test module."""
    m = Manager(tmp_path_factory.mktemp("keepmgr"), backends="nil,sim-snp")
    yield m
    m.stop()


@pytest.fixture
def token_file(mgr, tmp_path):
    tf = tmp_path / "token"
    tf.write_text(mgr.token + "\n")
    return str(tf)


@pytest.fixture(scope="module")
def nil_channel(mgr, tmp_path_factory):
    """(agent, channel): a provisioned nil Keep of ``mgr`` and its attested channel."""
    from keepbook.kernel.agent import ClientAgent, NewKeep

    tf = tmp_path_factory.mktemp("tok") / "t"
    tf.write_text(mgr.token)
    agent = ClientAgent()
    agent.call(agent.new_keep(NewKeep(backend="nil", manager=mgr.url, token_file=str(tf))))
    channel = agent.call(agent.current.ensure_channel())
    yield agent, channel
    agent.stop()
