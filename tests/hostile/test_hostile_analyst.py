"""A hostile analyst against the data owner (issue 12, items 2, 3, 5, 6 and 7): a production
Keep holds a secret the owner's policy does not release, and the analyst's own cells try every
other way out — completion and inspection, the audit log as a decryption oracle, numbers in the
cell status, release notes, a "figure" with data behind it, and flooding the audit log.  Each
attack must fail with the failing check named, and the secret must appear in nothing the
notebook receives.

The gate that decides lives in the Keep's own process (keep/inside/output_gate.py), outside
the cell's interpreter: these cells replace the guest driver's functions, fill the namespace
with names built from data and call the host door directly, and none of it changes what
leaves."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import secrets

import pytest

from keepbook.keep.inside.figures import png_chunks
from keepbook.kernel.agent import ClientAgent, NewKeep
from tests.hostile.report import STRESS, record

SECRET = "ssn-" + secrets.token_hex(6)
SETUP = f"import keep\nSECRET = {SECRET!r}\nrecords = {{'alice': SECRET}}\n"


def keep_with(mgr, tmp_path_factory, profile: str, policy: bytes = b"") -> ClientAgent:
    tf = tmp_path_factory.mktemp("tok") / "token"
    tf.write_text(mgr.token)
    agent = ClientAgent()
    agent.call(agent.new_keep(NewKeep(backend="nil", profile=profile, manager=mgr.url,
                                      token_file=str(tf), policy=policy)))
    run(agent, SETUP)
    return agent


@pytest.fixture(scope="module")
def prod(mgr, tmp_path_factory):
    """Production, the default policy: release required, no names, no values."""
    agent = keep_with(mgr, tmp_path_factory, "production")
    yield agent
    agent.stop()


@pytest.fixture(scope="module")
def names(mgr, tmp_path_factory):
    """Production whose owner allows session names in completion (never values)."""
    agent = keep_with(mgr, tmp_path_factory, "production",
                      b'[output]\nintrospection = "names"\n[release]\ntypes = ["number"]\n')
    yield agent
    agent.stop()


def run(agent, code: str) -> tuple[list, dict]:
    events: list = []
    status = agent.call(agent.run("python", events.append, code=code), timeout=120)
    return events, status


def ask(agent, op: str, code: str, pos: int | None = None) -> dict:
    return agent.call(agent.request(op, {"code": code, "cursor_pos": len(code) if pos is None else pos}))


def received(events, *replies) -> str:
    """Everything the notebook got, as one text to search."""
    return json.dumps([e.content for e in events] + list(replies), default=str)


def notices(events) -> list[str]:
    return [e.content["text"] for e in events if e.kind == "notice"]


# ---------------------------------------------------------------- 2: completion and inspection


def test_inspection_in_production_shows_no_value(prod):
    """Shift-Tab on a variable once showed its value (the repr in "String form")."""
    reply = ask(prod, "inspect", "SECRET")
    assert SECRET not in received([], reply)
    assert reply["found"] and reply["data"]["text/plain"].startswith(
        "withheld by policy: output.introspection — inspection shows values")
    record("attack", "inspection of a variable in production")


def test_completion_in_production_offers_no_session_names(prod):
    """Names built from data: completion once listed them."""
    run(prod, "globals()['x_' + SECRET.replace('-', '_')] = 1")
    reply = ask(prod, "complete", "x_")
    assert reply["matches"] == [] and SECRET.replace("-", "_") not in received([], reply)
    assert "output.introspection" in reply["metadata"]["keepbook"]
    # the Keep's own vocabulary still completes
    assert "print" in ask(prod, "complete", "pri")["matches"]
    assert ask(prod, "complete", "records.")["matches"] == []
    record("attack", "completion of names built from data in production")


HIJACK = """
import _keep_driver, _host, json
def leak(*args, **kw):
    _host.call(json.dumps({'op': 'reply', 'content': {'status': 'ok', 'found': True,
        'matches': [SECRET, 'x' + SECRET], 'cursor_start': 0, 'cursor_end': 0, 'metadata': {},
        'data': {'text/plain': 'dataset: ' + repr(records)}}}).encode())
_keep_driver.inspect_at = _keep_driver.complete = leak
"""


def test_a_cell_that_replaces_the_guests_inspection_gets_nothing(prod, names):
    """One inspect_request once returned a whole dataset: the cell replaced the guest driver's
    inspection function.  The gate, outside the interpreter, does not ask the guest in
    production, and checks what it gets where it does ask."""
    for agent in (prod, names):
        run(agent, HIJACK)
        inspect, complete = ask(agent, "inspect", "records"), ask(agent, "complete", "x")
        assert SECRET not in received([], inspect, complete), (inspect, complete)
        assert "withheld by policy: output.introspection" in inspect["data"]["text/plain"]
    record("attack", "guest inspection function replaced by the cell")


def test_names_policy_releases_names_never_values(names):
    names.call(names.request("restart"))  # a fresh session: the guest's own helpers again
    run(names, SETUP + "ward_total = 42\nglobals()['x_' + SECRET.replace('-', '_')] = 1\n")
    reply = ask(names, "complete", "ward_")
    assert "ward_total" in reply["matches"] and "42" not in received([], reply)
    # the owner allowed names: a name built from data is a name, and it leaves — said in the docs
    assert ask(names, "inspect", "ward_total")["data"]["text/plain"].startswith(
        "withheld by policy: output.introspection")
    record("attack", "names policy: names out, values withheld")


def test_status_request_carries_only_the_keeps_own_counters(prod):
    run(prod, "print(SECRET * 100)")
    status = prod.call(prod.request("status"))
    assert set(status) <= {"cells_run", "bytes_released", "uptime_s", "busy", "profile", "backend"}
    assert status["bytes_released"] == 0  # nothing was released; the withheld prints count nothing


# ---------------------------------------------------------------- 3 and 7: the audit log


def _old_refusal_digest(text: str) -> str:
    """The unsalted digest the gate once logged for a withheld stream event."""
    return "sha256:" + hashlib.sha256(json.dumps({"name": "stdout", "text": text},
                                                 sort_keys=True).encode()).hexdigest()


def test_the_audit_log_is_no_decryption_oracle(prod):
    """Print the secret one character per flush; the log once held each flush's SHA-256, and 256
    guesses per position recovered it.  Now a refusal names its rule, once per rule per cell."""
    events, _ = run(prod, "import sys\nfor c in SECRET:\n    print(c, end='', flush=True)\n"
                          "    sys.stdout.flush()\n")
    log = prod.call(prod.audit())
    text = json.dumps([e["data"] for e in log.entries], default=str)
    guesses = {_old_refusal_digest(chr(b)) for b in range(256)} | {_old_refusal_digest(SECRET)}
    assert not any(g in text for g in guesses)
    assert SECRET not in text
    last_cell = max(i for i, e in enumerate(log.entries) if e["kind"] == "cell")
    refusals = [e["data"] for e in log.entries[last_cell:] if e["kind"] == "refusal"]
    assert refusals == [{"rule": "release.required"}]  # coalesced, no digest
    record("attack", "audit log as a decryption oracle")


def test_redacted_errors_leave_a_random_id_not_a_digest(prod):
    events, status = run(prod, "raise ValueError(SECRET)")
    (err,) = [e for e in events if e.kind == "error"]
    eid = err.content["evalue"].split()[2]
    entry = [e for e in prod.call(prod.audit()).entries if e["kind"] == "error"][-1]["data"]
    assert entry == {"shown": "type", "error_id": eid}
    assert SECRET not in received(events)


@pytest.mark.parametrize("flushes", [20000 if STRESS else 3000])
def test_flooding_the_audit_log_from_a_cell_stays_bounded_and_exportable(prod, flushes):
    """A cell that flushes output in a loop once filled the log until `/v1/audit` answered 413."""
    before = len(prod.call(prod.audit()).entries)
    run(prod, f"import sys\nfor i in range({flushes}):\n    print(i, flush=True)\n"
              "    sys.stderr.write('e'); sys.stderr.flush()\n")
    log = prod.call(prod.audit())
    added = log.entries[before:]
    assert [e["kind"] for e in added] == ["cell", "refusal"], [e["kind"] for e in added]
    record("abuse", f"audit flood ({flushes} flushes in one cell)")


def test_the_log_exports_in_pages(prod):
    """However large, the log is read whole: page by page, up to the head of the first page."""
    from keepbook.keep.shared import audit_format, protocol as p

    for i in range(3):
        run(prod, f"print({i})")
    channel = prod.call(prod.current.ensure_channel())
    whole = prod.call(channel.audit())
    paged = prod.call(channel.audit(page_bytes=300))  # a few entries per page
    assert paged.entries == whole.entries and paged.head["count"] == whole.head["count"]
    assert len(p.decode_sequence(paged.entries)) == paged.head["count"] > 10
    audit_format.verify_export(paged.entries, paged.head, paged.signature,
                               prod.current.attestation.config)


# ---------------------------------------------------------------- 5: numbers in the status


def test_production_status_says_ok_and_whether_withheld_nothing_more(prod):
    events, status = run(prod, "print('x' * 4242)")
    assert status == {"ok": True, "reason": "ok", "withheld": True}
    assert "4242" not in received(events, status)
    events, status = run(prod, "x = 1")
    assert status == {"ok": True, "reason": "ok", "withheld": False}
    events, status = run(prod, "exit(4242)")
    assert status == {"ok": True, "reason": "exit", "withheld": False}
    run(prod, SETUP)
    record("attack", "output size and counts in the production status")


# ---------------------------------------------------------------- 6: notes and figures


def test_a_note_is_not_a_way_out(names):
    """types = ["number"]: keep.release(0, note=secret) once delivered the secret."""
    events, status = run(names, "keep.release(0, note=SECRET)")
    assert SECRET not in received(events)
    shown = [e for e in events if e.kind == "display_data"]
    assert shown and shown[0].content["data"]["text/plain"] == "0"
    assert notices(events) == ["withheld by policy: release.note — this policy releases no text, "
                               "so the note stays in the Keep"]
    log = names.call(names.audit())
    assert SECRET not in json.dumps([e["data"] for e in log.entries])
    assert status["withheld"] is True
    record("attack", "release note carrying a secret")


def test_notes_are_short_and_one_line(prod):
    events, _ = run(prod, "keep.release(1, note='x' * 201)")
    assert notices(events) == ["withheld by policy: release.note — a note may be at most 200 "
                               "characters; it stays in the Keep"]
    events, _ = run(prod, "keep.release(1, note='mean\\n' + SECRET)")
    assert SECRET not in received(events) and "one line of printable text" in notices(events)[0]
    events, _ = run(prod, "keep.release(1, note='mean age')")
    assert events[0].content["metadata"]["keepbook"]["note"] == "mean age"  # text allowed here


FIGURE = """
import base64, io, zlib, struct
def chunk(kind, data):
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
raw = b''.join(b'\\x00' + b'\\xff\\x00\\x00' * 4 for _ in range(3))
png = (b'\\x89PNG\\r\\n\\x1a\\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', 4, 3, 8, 2, 0, 0, 0))
       + chunk(b'tEXt', b'Comment\\x00' + SECRET.encode()) + chunk(b'IDAT', zlib.compress(raw))
       + chunk(b'IEND', b'') + ('id,ssn\\n1,' + SECRET + '\\n').encode())
import _host, json
answer = _host.call(json.dumps({'op': 'release', 'note': '', 'value': {'type': 'figure',
                   'png': base64.b64encode(png).decode()}}).encode())
"""


def test_a_figure_leaves_as_pixels_only(prod):
    """A "figure" was checked only for the PNG signature: CSV bytes behind it left the Keep."""
    events, _ = run(prod, FIGURE)
    (fig,) = [e for e in events if e.kind == "display_data"]
    png = base64.b64decode(fig.content["data"]["image/png"])
    assert png_chunks(png) == ["IHDR", "IDAT", "IEND"]
    assert SECRET.encode() not in png and SECRET not in received(events)
    from PIL import Image
    img = Image.open(io.BytesIO(png))
    assert img.size == (4, 3) and img.convert("RGB").getpixel((0, 0)) == (255, 0, 0)
    record("attack", "figure with data behind the PNG")


def test_figures_are_charged_to_the_budget(mgr, tmp_path_factory):
    agent = keep_with(mgr, tmp_path_factory, "production", b"[output]\ncell_bytes = 120\n")
    try:
        events, _ = run(agent, FIGURE)
        assert notices(events) == ["withheld by policy: output.cell_bytes — the output budget of "
                                   "120 bytes for this cell is spent"]
        assert not [e for e in events if e.kind == "display_data"]
    finally:
        agent.stop()


def test_a_dataset_leaves_no_digest_a_guess_can_confirm(prod, tmp_path):
    """The sealed file, the Keep's receipt and its audit log once carried SHA-256(plaintext):
    a small dataset ("yes") was confirmed by one guess.  The digest is keyed with the
    dataset's own key; the owner finds what `keepbook seal` printed in the audit log."""
    from keepbook.keep.shared import dataset_format, sealing
    from keepbook.kernel import dataset_sealer

    plaintext = b"yes\n"
    recipient = dataset_format.recipient_from_config(prod.current.attestation.config,
                                                     sealing.DEFAULT_SUITE)
    owner = dataset_sealer.load_owner_key(dataset_sealer.new_owner_key_pem())
    printed: list[str] = []
    sealed = b"".join(dataset_sealer.seal_stream(io.BytesIO(plaintext), name="answer.txt",
                                                 recipient=recipient, suite=sealing.DEFAULT_SUITE,
                                                 owner_key=owner, digest=printed.append))
    (tmp_path / "answer.sealed").write_bytes(sealed)
    receipt = prod.call(prod.upload(str(tmp_path / "answer.sealed")))
    entry = [e["data"] for e in prod.call(prod.audit()).entries if e["kind"] == "dataset"][-1]
    guess = hashlib.sha256(plaintext)
    assert guess.digest() not in sealed and guess.hexdigest().encode() not in sealed
    assert guess.hexdigest() not in json.dumps(receipt) + json.dumps(entry)
    assert entry["digest"] == receipt["digest"] == printed[0] and printed[0].startswith("hmac-sha256:")
    record("attack", "dataset digest as a guess oracle")
