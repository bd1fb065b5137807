"""Poly-margin-diminishing (PMD) label noise (Zhang et al., ICLR 2021).

A classifier trained on the clean labels gives class probabilities η(x). Its two most likely
classes u, s define the margin m = η_u − η_s. The noisy label is u with probability p(m)/factor
(capped at 1) and s otherwise, with p_I(m) = ½(1 + m²), p_II(m) = m³, p_III(m) = (m + m² + m³)/3.
Low-margin samples, near decision boundaries, are the ones that flip. `factor` is searched so the
realised noise rate against the clean labels hits the requested rate.
"""
import math

import numpy as np

from utils.errors import NoiseError

PMD_TYPES = {
    1: lambda m: 0.5 * (1 + m ** 2),
    2: lambda m: m ** 3,
    3: lambda m: (m + m ** 2 + m ** 3) / 3,
}


def top_two(eta):
    """The most and second most likely classes and the margin between them."""
    eta = np.asarray(eta, dtype=np.float64)
    order = np.argsort(-eta, axis=1, kind='stable')
    u, s = order[:, 0], order[:, 1]
    rows = np.arange(len(eta))
    return u, s, eta[rows, u] - eta[rows, s]


def draw_pmd(eta, pmd_type, factor, uniforms):
    """PMD labels for a given factor; `uniforms` (one U(0,1) per sample) fixes the randomness."""
    u, s, margin = top_two(eta)
    keep_u = np.minimum(1.0, PMD_TYPES[pmd_type](margin) / factor)
    return np.where(uniforms < keep_u, u, s)


def pmd_noise(eta, clean, pmd_type, rate, seed=0, tolerance=0.005):
    """PMD labels whose noise rate against `clean` is within `tolerance` of `rate`.

    The uniforms are drawn once from `seed`, so the realised rate is a step function of the factor;
    a log-spaced scan brackets the target and bisection refines it.
    Returns (labels, factor, realised_rate).
    """
    if pmd_type not in PMD_TYPES:
        raise NoiseError(f'PMD type must be one of {sorted(PMD_TYPES)}, got {pmd_type}')
    # a NaN target is never more than `tolerance` away from anything: it would pass the final check
    if not (math.isfinite(rate) and 0 <= rate < 1):
        raise NoiseError(f'PMD noise rate {rate} must be a finite number in [0, 1)')
    clean = np.asarray(clean)
    uniforms = np.random.default_rng(seed).random(len(clean))

    def realised(f):
        return float(np.mean(draw_pmd(eta, pmd_type, f, uniforms) != clean))

    grid = np.logspace(-3, 4, 141)
    rates = np.array([realised(f) for f in grid])
    best = int(np.argmin(np.abs(rates - rate)))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    factor, got = grid[best], rates[best]
    for _ in range(60):
        if abs(got - rate) <= tolerance / 4:
            break
        mid = np.sqrt(lo * hi)
        r = realised(mid)
        if abs(r - rate) < abs(got - rate):
            factor, got = mid, r
        # the rate grows with the factor (p/factor shrinks): move the bracket towards the target
        if r < rate:
            lo = mid
        else:
            hi = mid
    if abs(got - rate) > tolerance:
        raise NoiseError(f'PMD type {pmd_type}: the closest realised rate is {got:.4f} for target {rate} '
                         f'(factor {factor:.4g}); this η cannot produce that rate: choose a rate between '
                         f'{rates.min():.3f} and {rates.max():.3f}, the range it reaches')
    return draw_pmd(eta, pmd_type, factor, uniforms), float(factor), got
