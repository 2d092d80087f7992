"""Protein geometry: a virtual C-beta from the backbone, and the contact map (C-beta pairs closer than 8 A)."""

from __future__ import annotations

import numpy as np

CONTACT_ANGSTROM = 8.0  # the usual contact definition (CASP, Rao et al. 2020): C-beta distance < 8 A


def virtual_cb(n: np.ndarray, ca: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(L, 3) C-beta positions placed from N, CA, C (each (L, 3), in A) with ideal geometry, as trRosetta
    does: CB = -0.58273431 a + 0.56802827 b - 0.54067466 c + CA, with b = CA - N, c = C - CA, a = b x c."""
    b, c_ = ca - n, c - ca
    a = np.cross(b, c_)
    return -0.58273431 * a + 0.56802827 * b - 0.54067466 * c_ + ca


def contact_map(cb: np.ndarray, threshold: float = CONTACT_ANGSTROM) -> np.ndarray:
    """(L, L) bool: residues whose C-beta atoms are closer than `threshold` A (the diagonal included)."""
    d = np.linalg.norm(cb[:, None, :] - cb[None, :, :], axis=-1)
    return d < threshold


__all__ = ["CONTACT_ANGSTROM", "contact_map", "virtual_cb"]
