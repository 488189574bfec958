"""The division helpers of ``captum_rap/_engine/numerics.py`` against their definitions
written out element by element: the one sign convention (the sign bit) and the two
zero-denominator policies (stabilized: LRP rules; kept at 0: RAP)."""

from __future__ import annotations

import math

import torch

from captum_rap._engine.numerics import divide, divide_keep_zero, floored_epsilon, safe_divide, stabilize

DEN = torch.tensor([2.0, -3.0, 0.0, -0.0, 1e-12, -1e-12], dtype=torch.float64)
NUM = torch.tensor([1.0, 1.0, 5.0, 5.0, 2.0, -2.0], dtype=torch.float64)
EPS = 1e-6


def _sign_bit(v: float) -> float:
    return math.copysign(1.0, v)


def test_stabilize_uses_the_sign_bit():
    got = stabilize(DEN, EPS).tolist()
    want = [d + EPS * _sign_bit(d) for d in DEN.tolist()]
    assert got == want
    assert got[2] == EPS and got[3] == -EPS  # +0 -> +eps, -0 -> -eps: never 0


def test_divide_stabilizes_every_denominator():
    got = divide(NUM, DEN, EPS).tolist()
    want = [n / (d + EPS * _sign_bit(d)) for n, d in zip(NUM.tolist(), DEN.tolist())]
    assert got == want
    assert got[2] == 5.0 / EPS and got[3] == -5.0 / EPS


def test_divide_without_epsilon_is_safe_divide():
    got = divide(NUM, DEN, 0.0).tolist()
    want = [n / d if d != 0 else 0.0 for n, d in zip(NUM.tolist(), DEN.tolist())]
    assert got == want
    assert safe_divide(NUM, DEN).tolist() == want


def test_divide_keep_zero_keeps_exact_zeros_at_zero():
    want = [n / (d + EPS * _sign_bit(d)) if d != 0 else 0.0 for n, d in zip(NUM.tolist(), DEN.tolist())]
    assert divide_keep_zero(NUM, DEN, EPS).tolist() == want
    den = DEN.clone()
    assert divide_keep_zero(NUM, den, EPS, overwrite_den=True).tolist() == want
    # non-zero denominators: the same numbers as divide (one sign convention)
    nz = DEN != 0
    assert torch.equal(divide_keep_zero(NUM, DEN, EPS)[nz], divide(NUM, DEN, EPS)[nz])


def test_epsilon_is_floored_at_the_smallest_normal_number():
    assert floored_epsilon(1e-9, torch.float16) == torch.finfo(torch.float16).tiny
    den = torch.zeros(3, dtype=torch.float16)
    assert bool(torch.isfinite(divide(torch.ones(3, dtype=torch.float16), den, 1e-9)).all())
