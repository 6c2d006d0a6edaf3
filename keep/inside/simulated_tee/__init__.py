"""The simulated TEE vendors (``sim-snp``, ``sim-tdx``, ``sim-sgx``, ``sim-cca``): they play the
part of the hardware's firmware for simulated Keeps, and hold the simulated roots' private keys —
so they live inside the Keep, never on the user's machine or the host."""
