"""Data mixtures: per-source sampling weights, resampled each epoch, deterministic in (seed, epoch).

A weight is a multiplier on a source's size per epoch (the "epochs per source" of Llama 3 / Tulu
style mixes): 2.0 takes every example twice, 0.5 a random half, 1.5 every example once plus a random
half. The integer part repeats the whole source; the fractional part samples without replacement.
"""
from __future__ import annotations

import math
import zlib

import numpy as np


def mixture_rng(seed: int, epoch: int, salt: str = "") -> np.random.Generator:
    """A generator that is a pure function of (seed, epoch, salt): what makes a resumed run replay its data."""
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, zlib.crc32(salt.encode())])


def source_count(size: int, weight: float) -> int:
    """Examples a source of `size` contributes per epoch at `weight`."""
    return int(round(weight * size))


def sample_source(size: int, weight: float, rng: np.random.Generator) -> np.ndarray:
    """Indices into one source for one epoch: floor(weight) full copies plus a random remainder."""
    if weight < 0:
        raise ValueError(f"mixture weights must be >= 0, got {weight}")
    copies = math.floor(weight)
    extra = source_count(size, weight) - copies * size
    whole = np.tile(np.arange(size), copies)
    remainder = np.sort(rng.choice(size, size=extra, replace=False)) if extra > 0 else np.empty(0, dtype=np.int64)
    return np.concatenate([whole, remainder]).astype(np.int64)


def sample_mixture(
    sizes: dict[str, int], weights: dict[str, float], seed: int, epoch: int
) -> list[tuple[str, int]]:
    """The epoch's (source, index) list, shuffled; sources missing from `weights` get weight 1."""
    unknown = sorted(set(weights) - set(sizes))
    if unknown:
        raise ValueError(f"mixture weights name unknown sources {unknown}; the sources are {sorted(sizes)}")
    picked: list[tuple[str, int]] = []
    for source in sorted(sizes):
        indices = sample_source(sizes[source], weights.get(source, 1.0), mixture_rng(seed, epoch, source))
        picked.extend((source, int(i)) for i in indices)
    order = mixture_rng(seed, epoch, "shuffle").permutation(len(picked))
    return [picked[i] for i in order]
