"""The shared core: what every trust domain agrees on, holding no secret of its own.

Wire messages and the handshake's state machine (``protocol``, ``handshake``, ``framing``), the
facts (``facts``: backends, profiles, limits), formats (sealed datasets, the audit log, the
output policy), the one certificate builder, HPKE sealing, the Keep's measurement, and evidence
parsing and verification (``evidence/``).  No sockets are opened and no keys are kept here:
functions that use a key take it from their caller.  The user's machine (``keepbook.kernel``),
the untrusted host (``keepbook.keep.host``) and the inside of the Keep (``keepbook.keep.inside``)
each import this package and nothing of each other (``tests/test_trust_domains.py``).
"""
