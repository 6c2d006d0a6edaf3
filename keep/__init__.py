"""The Keep side of keepbook, one subpackage per trust domain:

* ``shared/`` — the shared core: protocol, formats, evidence verification; no secrets
* ``host/``   — the untrusted host: keepmgr, keepldr, launchers; never sees keys or plaintext
* ``inside/`` — inside the Keep: the wasmldr agent, runtimes, output gate, audit log
"""
