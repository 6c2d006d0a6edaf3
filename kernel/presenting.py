"""What the keepbook kernel and the IPython extension show, built once for both: MIME bundles
for Keep events, trust vectors, status panels, upload receipts and audit logs, and the
``%keep new`` options turned into a request.  Each bundle carries text/plain so nbclient,
nbconvert and terminals stay readable, text/html for static renderers, and a widget view where
ipywidgets are available."""

from __future__ import annotations

import base64
import html
import os
import time
from pathlib import Path
from typing import Any, Callable

from keepbook.keep.shared.evidence.trust import TrustVector
from keepbook.kernel import widgets as ui
from keepbook.kernel.agent import NewKeep
from keepbook.kernel.client import KeepError

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def jupyter_mime(data: Any) -> dict:
    """Binary MIME types travel as bytes on the channel; Jupyter wants base64 text."""
    if not isinstance(data, dict):
        return {"text/plain": str(data)}
    return {str(k): base64.b64encode(v).decode() if isinstance(v, bytes) else v
            for k, v in data.items()}


def new_keep_spec(args: Any) -> NewKeep:
    """The ``%keep new`` options (parsed by :mod:`keepbook.kernel.magics`) as a request."""
    policy = b""
    if args.policy:
        try:
            with open(args.policy, "rb") as fh:
                policy = fh.read()
        except OSError as exc:
            raise KeepError(f"cannot read output policy {args.policy}: {exc.strerror}") from None
    return NewKeep(backend=args.backend, profile=args.profile, manager=args.manager,
                   token_file=args.token_file, manager_ca=getattr(args, "manager_ca", None),
                   memory_bytes=args.memory, timeout_s=args.timeout,
                   output_bytes=args.output_cap, policy=policy, trust_policy=args.trust_policy,
                   trust_sim_roots=list(getattr(args, "trust_sim_roots", None) or []))


def widget_bundle(widget_factory: Callable[[], Any], text: str, html_text: str) -> dict:
    data: dict[str, Any] = {"text/plain": text, "text/html": html_text}
    try:
        data.update({k: v for k, v in widget_factory()._repr_mimebundle_().items() if k != "text/plain"})
    except Exception:  # no widgets here: the HTML and the text still tell everything
        pass
    return data


def trust_vector_bundle(tv: TrustVector, explain: bool = False, fingerprint: str | None = None) -> dict:
    """The trust vector; under a verified one, the Keep fingerprint the analyst reads out to
    the data owner (``keepbook seal --keep-fingerprint``)."""
    fingerprint = fingerprint if tv.ok else None
    text = tv.to_text() + ("\n" + ui.fingerprint_text(fingerprint) if fingerprint else "")
    text += "\n\nEvidence fields:\n" + ui.fields_text(tv) if explain else ""
    return widget_bundle(lambda: ui.trust_vector_widget(tv, explain, fingerprint), text,
                         ui.trust_vector_html(tv, explain, fingerprint))


def status_bundle(status: dict) -> dict:
    return widget_bundle(lambda: ui.status_widget(status), ui.status_text(status), ui.status_html(status))


def review_bundle(requests: list[dict], decide: Any = None) -> dict:
    """The owner's review list (a widget with Approve/Reject when ``decide`` is given)."""
    factory = (lambda: ui.review_widget(requests, decide)) if decide is not None else \
        (lambda: (_ for _ in ()).throw(RuntimeError("no widget")))
    return widget_bundle(factory, ui.review_text(requests), ui.review_html(requests))


def budget_bundle(budgets: dict[str, dict]) -> dict:
    return widget_bundle(lambda: ui.budget_widget(budgets), ui.budget_text(budgets),
                         ui.budget_html(budgets))


def pending_release(rid: int) -> dict:
    """What the analyst sees of a release waiting for the data owner (updated in place later)."""
    text = (f"⏳ release #{rid} is waiting for the data owner's review — it appears here once "
            "approved")
    return {"text/plain": text, "text/html": f"<div class='keepbook-review-pending' "
            f"data-id='{rid}'>{html.escape(text)}</div>"}


def rejected_release(rid: int, reason: str) -> dict:
    text = f"✗ release #{rid} was rejected by the data owner: {reason}"
    return {"text/plain": text, "text/html": f"<div class='keepbook-review-rejected' "
            f"data-id='{rid}' style='color:#b00020'>{html.escape(text)}</div>"}


def upload_receipt(path: str, r: dict) -> str:
    policy = r.get("policy") or {}
    return (f"Uploaded {path} → {r['path']} in the Keep ({r['bytes']} bytes, sealed and verified in "
            f"the Keep)\n  digest {r['digest']}\n  owner  {r['owner']}\n"
            f"  owner's policy {r['policy_digest']} — now in force with the Keep's (release required: "
            f"{policy.get('release_required')}, release mode: {policy.get('release_mode')})\n")


def audit_dir() -> Path:
    return Path(os.environ.get("KEEPBOOK_AUDIT_DIR") or Path(
        os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "keepbook" / "audit")


def save_audit(keep_id: str, raw: bytes, path: str | None = None) -> str:
    """Where ``%audit`` keeps the verified log for the data owner (``keepbook audit verify``)."""
    target = Path(path).expanduser() if path else audit_dir() / f"{keep_id}.audit.cbor"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(raw)
    return str(target)


def audit_bundle(log: Any, saved: str) -> dict:
    rows = log.table()
    text = "\n".join([*(f"✔ {c}" for c in log.checks),
                      *(f"{r['seq']:>4}  {r['time']}  {r['kind']:<14} {r['detail']}" for r in rows),
                      f"(saved for `keepbook audit verify`: {saved})"])
    body = "".join(f"<tr><td>{r['seq']}</td><td>{r['time']}</td><td>{html.escape(r['kind'])}"
                   f"</td><td style='text-align:left'>{html.escape(str(r['detail']))}</td></tr>"
                   for r in rows)
    checks = "".join(f"<li>✔ {html.escape(c)}</li>" for c in log.checks)
    return {"text/plain": text, "text/html":
            f"<b>Audit log — verified</b><ul>{checks}</ul><table><thead><tr><th>#</th>"
            f"<th>time</th><th>kind</th><th>detail</th></tr></thead><tbody>{body}"
            f"</tbody></table><small>saved: {html.escape(saved)}</small>"}


class Progress:
    """A progress bar for a long step (Keep creation, compilation, upload, engine warm-up).

    ``publish(kind, content)`` sends a Jupyter IOPub message; the bar is one display that is
    updated in place (``update_display_data``), so a headless run keeps just the final line:
    "✔ Keep created in 0.41 s".  Call it from the thread that owns the cell's output."""

    def __init__(self, publish: Callable[[str, dict], None], label: str, total: int | None = None):
        import uuid

        self._publish = publish
        self.label = label
        self.total = total
        self.started = time.monotonic()
        self.display_id = uuid.uuid4().hex
        self._bar: Any = None
        self._last = 0.0
        try:
            import ipywidgets as w

            self._bar = w.FloatProgress(value=0.0, min=0.0, max=float(total or 1),
                                        description=label[:40], bar_style="info",
                                        layout=w.Layout(width="60%"),
                                        style={"description_width": "initial"})
            if total is None:
                self._bar.value = 0.5  # indeterminate: half-way, striped by bar_style
        except Exception:
            self._bar = None
        self._send("display_data", f"… {label}")

    def _bundle(self, text: str) -> dict:
        data: dict[str, Any] = {"text/plain": text, "text/html": f"<small>{html.escape(text)}</small>"}
        if self._bar is not None:
            data.update({k: v for k, v in self._bar._repr_mimebundle_().items() if k != "text/plain"})
        return data

    def _send(self, kind: str, text: str) -> None:
        self._publish(kind, {"data": self._bundle(text), "metadata": {},
                             "transient": {"display_id": self.display_id}})

    def update(self, value: float) -> None:
        now = time.monotonic()
        if self._bar is not None:
            self._bar.value = float(min(value, self.total or value))
        if now - self._last > 0.25 and self.total:
            self._last = now
            pct = 100.0 * value / self.total
            self._send("update_display_data", f"… {self.label}: {pct:.0f}%")

    def done(self, text: str | None = None, ok: bool = True) -> None:
        elapsed = time.monotonic() - self.started
        if self._bar is not None:
            self._bar.bar_style = "success" if ok else "danger"
            self._bar.value = self._bar.max
        mark = "✔" if ok else "✗"
        self._send("update_display_data", f"{mark} {text or self.label} ({elapsed:.2f} s)")
