"""Guards shared by the oracle tests.

A comparison of zeros with zeros passes whatever the code computes: an oracle test whose values
are all zero (an untrained model whose accuracy never moves, an empty selection) tests nothing.
``assert_not_all_zero`` makes such a test fail loudly instead.
"""

import numpy as np


def assert_not_all_zero(*arrays, what="oracle values"):
    """Fails when any of ``arrays`` is empty, not finite, or holds only zeros.

    Call it on the numbers an oracle test compares, before comparing them.
    """
    for i, a in enumerate(arrays):
        a = np.asarray(a, dtype=np.float64)
        if a.size == 0:
            raise AssertionError(f"{what} #{i}: empty array; the comparison would test nothing.")
        if not np.all(np.isfinite(a)):
            raise AssertionError(f"{what} #{i}: non-finite values {a.ravel()[:8]}.")
        if not np.any(a != 0):
            raise AssertionError(
                f"{what} #{i}: all {a.size} values are exactly 0, so the comparison tests nothing "
                "(an untrained model? a score that cannot move?). Make the test compare real numbers."
            )
