"""Prewarming a pooled Keep: keepmgr asks for it only for pool spawns, keepldr passes it to the
wasmldr's environment, and the warm-up itself touches every engine and never fails a Keep."""

from __future__ import annotations

import subprocess
import sys

from keepbook.keep.host import keepldr


def test_keepldr_sets_the_prewarm_env_only_when_asked(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(keepldr, "make_keep_scratch", lambda keep_id: str(tmp_path))

    class FakePopen:
        def __init__(self, cmd, **kw):
            seen.append(kw["env"])

    monkeypatch.setattr(keepldr.subprocess, "Popen", FakePopen)
    keepldr.start_wasmldr("sim-snp", "k1", "subprocess", prewarm=True)
    keepldr.start_wasmldr("sim-snp", "k2", "subprocess")
    assert seen[0].get(keepldr.PREWARM_ENV) == "1"
    assert keepldr.PREWARM_ENV not in seen[1]


def test_prewarm_warms_every_engine_in_a_fresh_process():
    code = ("from keepbook.keep.inside import prewarm; import json; "
            "print(json.dumps(prewarm.prewarm('sim-snp')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith('{"wasm": "ok", "evidence": "ok", "python": "ok"}')


def test_prewarm_reports_instead_of_failing(monkeypatch):
    from keepbook.keep.inside import prewarm

    def boom():
        raise RuntimeError("no engine")

    monkeypatch.setattr(prewarm, "_wasm", boom)
    monkeypatch.setattr(prewarm, "_python", lambda: None)
    done = prewarm.prewarm("nil")
    assert done["wasm"] == "RuntimeError: no engine" and done["evidence"] == "ok"
