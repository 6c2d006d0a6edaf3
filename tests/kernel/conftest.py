import sys

import pytest


@pytest.fixture(scope="session", autouse=True)
def keepbook_kernelspec():
    """The kernel tests start the installed "keepbook" kernelspec; make sure it points here."""
    from keepbook.kernel.kernelspec import install

    install(prefix=sys.prefix)
