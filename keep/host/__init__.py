"""The untrusted host: the keep manager (``keepmgr``), one loader per Keep (``keepldr``), which
backends this host can run (``backends``), and a hostile manager for teaching and tests
(``hostile``).  Nothing here may hold a key that opens a Keep or see plaintext: it relays
evidence, sealed provisioning and lifecycle events only."""
