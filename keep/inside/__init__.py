"""Inside the Keep: the wasmldr agent (``server``), its keys and evidence (``identity``,
``evidence_source``, ``providers/``, ``simulated_tee/``), the cell runtimes (``cells``,
``runtime``, ``fastcells``, ``pysession``, ``guest/``), the output gate, the audit log and the
dataset opener.  This code sees plaintext and holds the Keep's private keys; nothing here talks
to the host except through the framed control pipe (lifecycle events only)."""
