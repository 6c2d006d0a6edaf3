"""Install the "keepbook" kernelspec so Jupyter (Lab, Notebook, VS Code, nbclient) can start it."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

KERNEL_NAME = "keepbook"


def kernel_json() -> dict:
    return {
        "argv": [sys.executable, "-m", "keepbook.kernel", "-f", "{connection_file}"],
        "display_name": "keepbook (Python in a Keep)",
        "language": "python",
        # Interrupts travel as messages to the Keep; a signal would only reach the host.
        "interrupt_mode": "message",
        "metadata": {"debugger": False},
    }


def install(user: bool = False, prefix: str | None = None) -> str:
    from jupyter_client.kernelspec import KernelSpecManager

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "kernel.json").write_text(json.dumps(kernel_json(), indent=1))
        return KernelSpecManager().install_kernel_spec(tmp, KERNEL_NAME, user=user, prefix=prefix)
