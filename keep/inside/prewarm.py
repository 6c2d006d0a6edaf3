"""Warm a pooled Keep before it reports "booted": pay the process's one-time costs while no
client waits.  Inside the Keep.

A Keep started by keepmgr's warm pool has ``KEEPBOOK_KEEP_PREWARM=1`` in its environment (set
by keepldr, see keep/host/keepldr.py).  Measured on the 2-core bench machine (load ~3), a
pooled Keep's first result went from 0.11 s to 0.04 s for a WAT cell and from 0.49 s to 0.09 s
for a Python cell when this ran before "booted".  The costs it moves out of the client's path:

* the Python engine: checking the interpreter's files against their SHA-256 sums (≈100 MB read
  and hashed per process), mapping the compiled interpreter, compiling the staged IPython to
  bytecode (a throwaway session), then booting the session the Keep's first Python cell will
  use (:func:`pysession.open_spare`: IPython's shell started, no cell run) for the Keep's own,
  still empty /data folder and the default memory limit;
* the Wasm runtime: importing wasmtime, Cranelift's and the WASI linker's lazy set-up;
* the simulated vendor keys the Keep signs its evidence with (sim-* backends).

Nothing here belongs to a client: no config, no key, no evidence, no cell.  A Keep started for
a client that is waiting (cold) does not prewarm: it would only delay that client's Start.
"""

from __future__ import annotations

import os
import warnings

ENV = "KEEPBOOK_KEEP_PREWARM"



def wanted() -> bool:
    return os.environ.get(ENV) == "1"


def prewarm(backend: str, data_dir: str | None = None) -> dict[str, str]:
    """Warm what this backend's Keep will use; never raises (a cold Keep still works).
    ``data_dir``: the Keep's /data folder, for the spare Python session.  Returns what was
    warmed or why not, for tests."""
    done: dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, step in (("wasm", _wasm), ("evidence", lambda: _evidence(backend)),
                           ("python", lambda: _python(data_dir))):
            try:
                step()
                done[name] = "ok"
            except Exception as exc:  # warming is an optimisation only
                done[name] = f"{type(exc).__name__}: {exc}"
    return done


def _wasm() -> None:
    from keepbook.keep.inside import runtime

    runtime.prewarm()


def _evidence(backend: str) -> None:
    from keepbook.keep.inside import evidence_source  # noqa: F401  (its imports)

    from keepbook.keep.shared import facts

    spec = facts.backend(backend)
    if spec.simulated:
        from keepbook.keep.inside.simulated_tee import vendor

        vendor.load_signing_keys(spec.evidence)


def _python(data_dir: str | None) -> None:
    from keepbook.keep.inside import cells, pysession
    from keepbook.keep.shared import facts

    if not cells.python_engine_present():
        return
    pysession.warm()
    if data_dir is not None:
        pysession.open_spare(facts.DEFAULT_MEMORY_BYTES, data_dir)
