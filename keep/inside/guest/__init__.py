"""Guest-side resources of the Python session (run inside the CPython-in-Wasm guest, not on the host)."""
