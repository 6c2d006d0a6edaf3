"""A small numeric C program for the compiled-cell benchmark (Wasm in the Keep vs native gcc -O2)."""

from __future__ import annotations


def bench_c_source(n: int = 256, repeats: int = 4) -> str:
    """Dense n×n double matrix multiply, `repeats` times, printing a checksum (so it is not optimised away).

    Deterministic, no libc beyond printf, no timing inside: the benchmark times the whole run
    both natively and in the Keep, so the program itself is identical in both.
    """
    if n < 1 or repeats < 1:
        raise ValueError("n and repeats must be positive")
    return f"""\
#include <stdio.h>

#define N {n}
#define REPEATS {repeats}

static double a[N][N], b[N][N], c[N][N];

int main(void) {{
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {{
            a[i][j] = (double)((i * 7 + j * 3) % 17) / 17.0;
            b[i][j] = (double)((i * 5 + j * 11) % 13) / 13.0;
        }}
    double checksum = 0.0;
    for (int r = 0; r < REPEATS; r++) {{
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++)
                c[i][j] = 0.0;
        for (int i = 0; i < N; i++)
            for (int k = 0; k < N; k++) {{
                double aik = a[i][k] + r * 1e-9;
                for (int j = 0; j < N; j++)
                    c[i][j] += aik * b[k][j];
            }}
        for (int i = 0; i < N; i++)
            checksum += c[i][(i * 31 + r) % N];
    }}
    printf("checksum %.6f\\n", checksum);
    return 0;
}}
"""
