"""``python -m keepbook.keep.inside.simulated_tee KIND...``: make this installation's simulated
roots for these evidence kinds if they do not exist yet (in the directory
``$KEEPBOOK_SIM_ROOTS`` names), and print nothing but what was made.  A keep manager starts this
before it announces the roots its Keeps will sign with: it may read their certificates, never
make or hold their keys."""

from __future__ import annotations

import sys

from keepbook.keep.inside.simulated_tee import vendor
from keepbook.keep.shared.evidence.simulated_roots import KINDS


def main(argv: list[str]) -> int:
    unknown = [k for k in argv if k not in KINDS]
    if unknown or not argv:
        print(f"usage: python -m keepbook.keep.inside.simulated_tee KIND... (kinds: "
              f"{', '.join(KINDS)})", file=sys.stderr)
        return 2
    for kind in argv:
        vendor.ensure_roots(kind)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
