"""The P% paired subset, chosen by patient with a fixed seed.

A pure function of (patient id, percent, seed): pre-training and fine-tuning call it
independently and see the same subset, with no file to pass around. Subsets are nested: for a
fixed seed the 1% subset lies inside the 5% subset, which lies inside the 10% subset, so a sweep
over P adds patients instead of drawing new ones.
"""

from __future__ import annotations

import hashlib

_SCALE = float(2**64)


def patient_quantile(patient_id: str, seed: int = 0) -> float:
    """A uniform number in [0, 1) fixed by (patient id, seed): sha1, not Python's salted hash()."""
    digest = hashlib.sha1(f"{int(seed)}:{patient_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def in_paired_subset(patient_id: str, percent: float, seed: int = 0) -> bool:
    """True when `patient_id` belongs to the `percent`% subset (0 <= percent <= 100) of `seed`."""
    if not 0.0 <= percent <= 100.0:
        raise ValueError(f"percent must lie in [0, 100], got {percent}")
    if percent >= 100.0:
        return True
    return patient_quantile(str(patient_id), seed) * 100.0 < percent
