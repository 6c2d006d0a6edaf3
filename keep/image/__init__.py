"""The Keep image builder (``keepbook image build``): a Linux kernel and an initramfs that boot
straight into the wasmldr, built reproducibly from pinned Debian packages and wheels.

A build tool holding no secrets: it imports only the shared core (``keep/shared/vm_image.py``,
``keep/shared/measurement.py``) and reads the in-Keep package as files.  See docs/keep-image.md."""
