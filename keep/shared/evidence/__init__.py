"""Evidence formats and verifiers (SEV-SNP, TDX, SGX, nil, simulated).

Entry points: :func:`detect_kind`, :func:`registry.get_verifier`, :mod:`simulated`."""

from .detect import detect, detect_kind  # noqa: F401
