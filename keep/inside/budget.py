"""The privacy budget of one analyst session (one Keep), per dataset, inside the Keep.

Sequential (basic) composition: a session whose queries spent (ε₁, δ₁), …, (εₖ, δₖ) on a dataset
is (Σεᵢ, Σδᵢ)-differentially private for it, also when each query was chosen after seeing the
answers before it and the session stops at the owner's budget (Dwork & Roth 2014, Thm. 3.16;
Rogers, Roth, Ullman, Vadhan 2016: basic composition holds for privacy *filters*).  The sums are
kept exactly (as fractions of the floats OpenDP reports), so rounding never lets a query past
the limit — except for :data:`SLACK`: decimal shares such as ε = 0.1 are not exact in binary
(ten of them add up to 1.0000000000000000555), so a charge may pass the total by at most a
billionth of it, which changes no guarantee anyone can measure (e^(10⁻⁹·ε) ≈ 1).  A budget is keyed by the dataset's content digest, not its name: the same data
uploaded twice under two names shares one budget."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from fractions import Fraction


#: how far (relative to the total) exact sums of binary floats may pass the owner's budget
SLACK = Fraction(1, 10**9)


class BudgetExceeded(Exception):
    """Refused: the query would pass the owner's budget; nothing was spent."""


@dataclass
class Budget:
    epsilon: Fraction
    delta: Fraction
    spent_epsilon: Fraction = Fraction(0)
    spent_delta: Fraction = Fraction(0)
    queries: int = 0

    def remaining(self) -> tuple[float, float]:
        return (max(0.0, float(self.epsilon - self.spent_epsilon)),
                max(0.0, float(self.delta - self.spent_delta)))

    def summary(self) -> dict:
        left_e, left_d = self.remaining()
        return {"epsilon": float(self.epsilon), "delta": float(self.delta),
                "spent_epsilon": float(self.spent_epsilon), "spent_delta": float(self.spent_delta),
                "remaining_epsilon": left_e, "remaining_delta": left_d, "queries": self.queries}


@dataclass
class Accountant:
    """Budgets of every dataset of this Keep; thread-safe (cells run on worker threads)."""

    budgets: dict[str, Budget] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def open(self, key: str, epsilon: float, delta: float) -> Budget:
        """The budget of dataset ``key`` (its digest); a second upload of the same data can
        only lower the total, never reset what was spent."""
        with self._lock:
            b = self.budgets.get(key)
            if b is None:
                b = self.budgets[key] = Budget(Fraction(epsilon), Fraction(delta))
            else:
                b.epsilon = min(b.epsilon, Fraction(epsilon))
                b.delta = min(b.delta, Fraction(delta))
            return b

    def charge(self, key: str, epsilon: float, delta: float) -> Budget:
        """Spend (ε, δ) on dataset ``key``, or raise :class:`BudgetExceeded` spending nothing."""
        e, d = Fraction(epsilon), Fraction(delta)
        if e <= 0 or d < 0:
            raise ValueError("a charge must spend ε > 0 and δ ≥ 0")
        with self._lock:
            b = self.budgets[key]
            if b.spent_epsilon + e > b.epsilon * (1 + SLACK) or \
                    b.spent_delta + d > b.delta * (1 + SLACK):
                left_e, left_d = b.remaining()
                raise BudgetExceeded(
                    f"the privacy budget is spent: this query asks ε={float(e):g}, δ={float(d):g} "
                    f"and ε={left_e:g}, δ={left_d:g} remain of the owner's ε={float(b.epsilon):g}, "
                    f"δ={float(b.delta):g} for this session; nothing was charged")
            b.spent_epsilon += e
            b.spent_delta += d
            b.queries += 1
            return b
