"""``keepbook review``: the data owner reviews the analyst's releases, on the owner's machine.

    keepbook review --to URL --keep ID [--keep-fingerprint FP] [--allow-simulated] [COMMAND]

attests the Keep with the owner's own fresh nonce under the owner's own expectations (the same
as ``keepbook seal``), then runs one COMMAND — ``list``, ``show N``, ``approve N``,
``reject N --reason TEXT`` — or, without one, a small terminal UI that reads those commands
(and ``help``, ``quit``) line by line.  Approving always shows the request first and names the
digest of exactly what was shown, so the Keep releases that value and no other."""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
from typing import Any, Callable, TextIO

from keepbook.keep.shared import dataset_format
from keepbook.kernel import dataset_sealer, owner_cli
from keepbook.kernel.client import AttestationRefused, KeepError
from keepbook.kernel.owner_review import OwnerSession, ReviewError, describe

HELP = """commands:
  list                     the release requests that read your data
  show N                   request N: its value, note, the cell's source, the datasets
  approve N                show request N, then approve exactly that value
  reject N REASON...       reject request N; the analyst sees your reason
  help, quit"""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="keepbook review", description=__doc__.split("\n\n")[0])
    ap.add_argument("--to", required=True, metavar="MANAGER_URL")
    ap.add_argument("--keep", required=True, metavar="ID")
    ap.add_argument("--token-file", help="bearer token for --to (or $KEEPBOOK_MANAGER_TOKEN)")
    ap.add_argument("--owner-key", metavar="PEM", help="your owner key (the one you sealed with; "
                    "default: $KEEPBOOK_OWNER_KEY or ~/.config/keepbook/owner-key.pem)")
    ap.add_argument("--yes", action="store_true", help="approve without asking to confirm")
    owner_cli.add_expectation_options(ap)
    ap.add_argument("command", nargs="*", help="list | show N | approve N | reject N --reason TEXT")
    ap.add_argument("--reason", help="why you reject (the analyst sees it)")
    return ap


def main(argv: list[str], stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = stdout or sys.stdout
    try:
        session = _run(_connect(args))
    except AttestationRefused as exc:
        print(exc.result.vector.to_text(), file=out)
        print(f"keepbook review: the Keep did not verify — nothing was sent. Failing claim: "
              f"{exc.result.vector.first_failure()}", file=sys.stderr)
        return 2
    except (KeepError, dataset_format.DatasetError) as exc:
        print(f"keepbook review: {exc}", file=sys.stderr)
        return 1
    print(f"Keep {args.keep} verified ({session.attestation.vector.label}, fingerprint "
          f"{session.attestation.fingerprint}); you are {session.owner}", file=out)
    ui = ReviewUI(session, out, confirm=_confirm(args.yes, stdin or sys.stdin, out))
    try:
        if args.command:
            words = list(args.command) + ([args.reason] if args.reason else [])
            return 0 if ui.run(words) else 1
        return ui.loop(stdin or sys.stdin)
    finally:
        _run(session.manager.close())


async def _connect(args: argparse.Namespace) -> OwnerSession:
    from keepbook.kernel.agent import _read_token
    from keepbook.kernel.manager_client import ManagerClient

    key, _, _ = dataset_sealer.load_or_create_owner_key(args.owner_key)
    manager = ManagerClient(args.to, _read_token(args.token_file))
    return await OwnerSession.attest(manager, args.keep, owner_cli.owner_expectation(args), key)


def _confirm(yes: bool, stdin: TextIO, out: TextIO) -> Callable[[str], bool]:
    def ask(question: str) -> bool:
        if yes:
            return True
        if not stdin.isatty() and stdin is sys.stdin:
            print(f"{question} — not asked (no terminal): give --yes to approve", file=out)
            return False
        print(f"{question} [y/N] ", end="", file=out, flush=True)
        return stdin.readline().strip().lower() in ("y", "yes")
    return ask


class ReviewUI:
    """The commands, on one verified :class:`OwnerSession`; prints to ``out``."""

    def __init__(self, session: OwnerSession, out: TextIO, confirm: Callable[[str], bool]):
        self.session = session
        self.out = out
        self.confirm = confirm

    def loop(self, stdin: TextIO) -> int:
        print(HELP, file=self.out)
        while True:
            print("review> ", end="", file=self.out, flush=True)
            line = stdin.readline()
            if not line or line.strip() in ("quit", "exit", "q"):
                return 0
            try:
                words = shlex.split(line)
            except ValueError as exc:
                print(f"cannot read that line: {exc}", file=self.out)
                continue
            if words:
                self.run(words)

    def run(self, words: list[str]) -> bool:
        """One command; True if it did what it said."""
        cmd, rest = words[0], words[1:]
        try:
            if cmd == "help":
                print(HELP, file=self.out)
            elif cmd == "list" and not rest:
                self._list()
            elif cmd in ("show", "approve", "reject") and rest and rest[0].isdigit():
                rid = int(rest[0])
                if cmd == "show":
                    print(describe(self._call(self.session.show(rid))), file=self.out)
                elif cmd == "approve":
                    return self._approve(rid)
                else:
                    reason = " ".join(rest[1:]).strip()
                    if not reason:
                        print("reject needs a reason (the analyst sees it): reject N REASON",
                              file=self.out)
                        return False
                    shown = self._call(self.session.show(rid))
                    done = self._call(self.session.decide(rid, "reject", shown["value_digest"], reason))
                    print(f"#{rid} {done.get('state')}: {reason}", file=self.out)
            else:
                print(f"not a command: {' '.join(words)}\n{HELP}", file=self.out)
                return False
        except (ReviewError, KeepError) as exc:
            print(str(exc), file=self.out)
            return False
        return True

    def _list(self) -> None:
        requests = self._call(self.session.list())
        if not requests:
            print("(no release requests read your data)", file=self.out)
        for r in requests:
            print(describe(r), file=self.out)

    def _approve(self, rid: int) -> bool:
        shown = self._call(self.session.show(rid))
        print(describe(shown), file=self.out)
        if shown.get("state") != "pending":
            print(f"#{rid} is {shown.get('state')} already", file=self.out)
            return False
        if not self.confirm(f"approve #{rid} ({shown['value_digest'][:23]}…) for release"):
            print("not approved", file=self.out)
            return False
        done = self._call(self.session.decide(rid, "approve", shown["value_digest"]))
        print(f"#{rid} {done.get('state')}" + ("" if done.get("state") == "approved" else
              " (waiting for the other owners of the data it read)"), file=self.out)
        return True

    @staticmethod
    def _call(coro: Any) -> Any:
        return _run(coro)


_LOOP: asyncio.AbstractEventLoop | None = None


def _run(coro: Any) -> Any:
    """The CLI's own loop, kept between commands (the manager client's HTTP session lives on it)."""
    global _LOOP
    if _LOOP is None:
        _LOOP = asyncio.new_event_loop()
    return _LOOP.run_until_complete(coro)
