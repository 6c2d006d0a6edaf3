"""keepbook: a Jupyter kernel for confidential computing.

The distribution maps its trust domains under one namespace:

* ``keepbook.kernel``     (``kernel/``)  — the user's machine: client agent, verifier UI, kernel
* ``keepbook.keep``       (``keep/``)    — the protocol, evidence formats, and the two remote sides:
  ``keep.host`` (untrusted: keepmgr, keepldr) and ``keep.wasmldr`` (inside the Keep)
* ``keepbook.extensions`` (``extensions/``) — ``%load_ext keepbook`` for an ordinary IPython kernel
"""

__version__ = "0.1.0"


def load_ipython_extension(ipython):  # pragma: no cover - thin delegation
    from keepbook.extensions.ipython import load_ipython_extension as _load

    _load(ipython)


def unload_ipython_extension(ipython):  # pragma: no cover - thin delegation
    from keepbook.extensions.ipython import unload_ipython_extension as _unload

    _unload(ipython)
