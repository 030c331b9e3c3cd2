"""Merge methods: each a function of same-shaped tensors (one per model, plus the base) to a float32 tensor.

Notation: x_i the fine-tuned models, b the base (initialisation), d_i = x_i - b their task vectors,
w_i the weights. Each method is elementwise once a few per-tensor numbers are known, so it is
written as a block function applied by `elementwise` (see blockwise.py), which bounds memory.

Exactness: sums are written relative to the first input (x_0 - sum_i w_i (x_0 - x_i) for a sum whose
weights add to 1) and a task-vector result b + D as x_0 - (d_0 - D). Both are the textbook formulas
rearranged; they make a merge of identical models return the model bit for bit.

`METHODS` maps a method name to its `Method`; the merge driver and the `merge` stage pick from it.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Callable, Sequence

import torch

from posttrain.merge.blockwise import (
    BLOCK_ELEMENTS,
    cosine_from_gram,
    elementwise,
    gram,
    magnitude_threshold,
    seeded_generator,
)

COLINEAR_COSINE = 0.9995  # |cos| above this: SLERP falls back to linear interpolation (sin(angle) ~ 0)


class MergeWarning(UserWarning):
    """A merge went on but something about one tensor deserves a look (e.g. Model Stock's t clamped)."""


def _weighted_sum(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """sum_i w_i t_i, written as W t_0 - sum_{i>0} w_i (t_0 - t_i) with W = sum_i w_i.

    Exactly t_0 when all tensors are equal and W == 1.
    """
    out = tensors[0] * float(sum(weights))
    for tensor, weight in zip(tensors[1:], weights[1:]):
        out.sub_(tensors[0] - tensor, alpha=weight)
    return out


def _normalized(weights: Sequence[float]) -> list[float]:
    total = float(sum(weights))
    if total == 0.0:
        raise ValueError(f"weights {list(weights)} sum to zero; cannot normalise them")
    return [w / total for w in weights]


def _from_task_vector(first_model: torch.Tensor, first_delta: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """b + delta, written as x_0 - (d_0 - delta): exactly x_0 when delta == d_0."""
    return first_model - (first_delta - delta)


# ---------------------------------------------------------------- linear and task arithmetic


def linear(models: Sequence[torch.Tensor], weights: Sequence[float], block: int = BLOCK_ELEMENTS) -> torch.Tensor:
    """Model soup (Wortsman et al. 2022, "Model soups"): x = sum_i w_i x_i / sum_i w_i."""
    normalized = _normalized(weights)
    return elementwise(lambda xs, _: _weighted_sum(xs, normalized), models, None, block)


def task_arithmetic(models: Sequence[torch.Tensor], base: torch.Tensor, weights: Sequence[float],
                    scale: float = 1.0, block: int = BLOCK_ELEMENTS) -> torch.Tensor:
    """Task arithmetic (Ilharco et al. 2023, "Editing models with task arithmetic"): x = b + lambda sum_i w_i d_i."""
    def combine(xs: list[torch.Tensor], b: torch.Tensor) -> torch.Tensor:
        deltas = [x - b for x in xs]
        return _from_task_vector(xs[0], deltas[0], scale * _weighted_sum(deltas, weights))

    return elementwise(combine, models, base, block)


# ---------------------------------------------------------------- TIES and DARE


def disjoint_mean(deltas: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """TIES' elect + disjoint merge of task vectors d_i.

    gamma = sgn(sum_i w_i d_i); D = sum_{i: sgn d_i = gamma} w_i d_i / sum_{same i} w_i.

    Where gamma is 0 or no entry agrees, D is 0.
    """
    weighted = [w * d for w, d in zip(weights, deltas)]
    elected = torch.sign(sum(weighted))
    numerator = torch.zeros_like(deltas[0])
    denominator = torch.zeros_like(deltas[0])
    for w, d, wd in zip(weights, deltas, weighted):
        agree = (torch.sign(d) == elected) & (elected != 0)
        numerator += torch.where(agree, wd, 0.0)
        denominator += agree * w
    return torch.where(denominator != 0, numerator / denominator, 0.0)


def ties(models: Sequence[torch.Tensor], base: torch.Tensor, weights: Sequence[float], density: float,
         scale: float = 1.0, block: int = BLOCK_ELEMENTS) -> torch.Tensor:
    """TIES-Merging (Yadav et al. 2023, "Resolving interference when merging models").

    Trim: keep the top `density` fraction of each d_i by magnitude, zero the rest; elect the sign
    gamma = sgn(sum_i w_i trim(d_i)); disjoint merge: mean of the entries that agree with gamma
    (weighted); x = b + lambda D.
    """
    thresholds = [magnitude_threshold(x, base, density, block) for x in models]

    def combine(xs: list[torch.Tensor], b: torch.Tensor) -> torch.Tensor:
        deltas = [x - b for x in xs]
        trimmed = [torch.where(d.abs() >= threshold, d, 0.0) for d, threshold in zip(deltas, thresholds)]
        return _from_task_vector(xs[0], deltas[0], scale * disjoint_mean(trimmed, weights))

    return elementwise(combine, models, base, block)


def dare_drop(delta: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """DARE (Yu et al. 2024, "Language models are Super Mario"): keep each entry with probability p, rescale by 1/p.

    d~ = m * d / p, m ~ Bernoulli(p = density); E[d~] = d. At density 1 it is d itself.
    """
    if density >= 1.0:
        return delta
    keep = torch.rand(delta.shape, generator=generator) < density
    return torch.where(keep, delta / density, 0.0)


def dare(models: Sequence[torch.Tensor], base: torch.Tensor, weights: Sequence[float], density: float,
         seed: int, name: str, combine_with: str = "linear", scale: float = 1.0,
         block: int = BLOCK_ELEMENTS) -> torch.Tensor:
    """DARE drop-and-rescale of each d_i, then a weighted sum (`linear`: x = b + lambda sum_i w_i d~_i) or
    TIES' sign election and disjoint mean (`ties`: x = b + lambda D(d~)).

    Each model's mask comes from its own generator seeded by (seed, tensor name, model index), so a
    tensor's result does not depend on the order tensors are merged in or on the block size.
    """
    generators = [seeded_generator(seed, name, i) for i in range(len(models))]
    mix = {"linear": _weighted_sum, "ties": disjoint_mean}[combine_with]

    def combine(xs: list[torch.Tensor], b: torch.Tensor) -> torch.Tensor:
        deltas = [x - b for x in xs]
        dropped = [dare_drop(d, density, g) for d, g in zip(deltas, generators)]
        return _from_task_vector(xs[0], deltas[0], scale * mix(dropped, weights))

    return elementwise(combine, models, base, block)


# ---------------------------------------------------------------- SLERP and Model Stock


def slerp_coefficients(cos: float | None, t: float) -> tuple[float, float] | None:
    """(sin((1-t) O) / sin O, sin(t O) / sin O) with O = arccos(cos); None when nearly colinear (use lerp)."""
    if cos is None or abs(cos) > COLINEAR_COSINE:
        return None
    angle = math.acos(cos)
    return math.sin((1 - t) * angle) / math.sin(angle), math.sin(t * angle) / math.sin(angle)


def _slerp_or_lerp(v0: torch.Tensor, v1: torch.Tensor, t: float,
                   coefficients: tuple[float, float] | None) -> torch.Tensor:
    if coefficients is None:
        return v0 - t * (v0 - v1)  # lerp v0 + t (v1 - v0), exactly v0 when v0 == v1
    return coefficients[0] * v0 + coefficients[1] * v1


def slerp(first: torch.Tensor, second: torch.Tensor, t: float, base: torch.Tensor | None = None,
          block: int = BLOCK_ELEMENTS) -> torch.Tensor:
    """Spherical linear interpolation (Shoemake 1985), per tensor, of two models or of their task vectors.

    v(t) = sin((1-t) O) / sin O v_0 + sin(t O) / sin O v_1, cos O = <v_0, v_1> / (|v_0| |v_1|), with
    v_i = x_i, or v_i = d_i and x = b + v(t) when a base is given. Nearly colinear (|cos O| > 0.9995)
    or zero vectors: linear interpolation v_0 + t (v_1 - v_0).
    """
    g = gram([first, second], base, block)
    coefficients = slerp_coefficients(cosine_from_gram(g, 0, 1), t)

    def combine(xs: list[torch.Tensor], b: torch.Tensor | None) -> torch.Tensor:
        if b is None:
            return _slerp_or_lerp(xs[0], xs[1], t, coefficients)
        deltas = [x - b for x in xs]
        return _from_task_vector(xs[0], deltas[0], _slerp_or_lerp(deltas[0], deltas[1], t, coefficients))

    return elementwise(combine, [first, second], base, block)


def model_stock_t(cos: float, k: int) -> float:
    """Model Stock's interpolation ratio t = k cos / (1 + (k - 1) cos), k models at pairwise angle arccos(cos)."""
    return k * cos / (1 + (k - 1) * cos)


def model_stock(models: Sequence[torch.Tensor], base: torch.Tensor, name: str = "",
                block: int = BLOCK_ELEMENTS) -> torch.Tensor:
    """Model Stock (Jang et al. 2024, "Model Stock: all we need is just a few fine-tuned models"), per tensor.

    x = t x_avg + (1 - t) b, t = k cos / (1 + (k - 1) cos), cos the mean pairwise cosine of the
    task vectors d_i. A negative cos gives t outside [0, 1]: t is clamped, with a MergeWarning.
    Zero task vectors count as cos 0 (t = 0: the base).
    """
    k = len(models)
    g = gram(models, base, block)
    cosines = [cosine_from_gram(g, i, j) or 0.0 for i in range(k) for j in range(i + 1, k)]
    cos = sum(cosines) / len(cosines)
    t = model_stock_t(cos, k) if 1 + (k - 1) * cos != 0 else 0.0
    if cos < 0:
        warnings.warn(f"{name or 'tensor'}: Model Stock task vectors have mean cosine {cos:.3f} < 0; "
                      f"t = {t:.3f} clamped to [0, 1]", MergeWarning, stacklevel=2)
        t = min(1.0, max(0.0, t))
    uniform = [1.0 / k] * k

    def combine(xs: list[torch.Tensor], b: torch.Tensor) -> torch.Tensor:
        average = _weighted_sum(xs, uniform)
        return average - (1 - t) * (average - b)  # t x_avg + (1 - t) b, exactly x_avg when t == 1

    return elementwise(combine, models, base, block)


# ---------------------------------------------------------------- WARP


def warp(models: Sequence[torch.Tensor], base: torch.Tensor, eta: float, block: int = BLOCK_ELEMENTS) -> torch.Tensor:
    """WARP's merging steps (Ramé et al. 2024, "WARP: on the benefits of weight averaged rewarded policies").

    SLERP of the task vectors of M runs from one initialisation b (D = slerp(d_1, d_2, 1/2) for two;
    for more, folded pairwise as a running mean on the sphere, D_m = slerp(D_{m-1}, d_m, 1/m), which
    is not exactly symmetric in the runs), then LITI, linear interpolation towards the
    initialisation: x = (1 - eta) b + eta (b + D_M) = b + eta D_M.
    """
    merged = elementwise(lambda xs, b: xs[0] - b, models[:1], base, block)  # D_1 = d_1, float32
    for m, model in enumerate(models[1:], start=2):
        coefficients = slerp_coefficients(_cosine_to_delta(merged, model, base, block), 1.0 / m)
        elementwise(lambda xs, b: _slerp_or_lerp(xs[0], xs[1] - b, 1.0 / m, coefficients),
                    [merged, model], base, block, out=merged)
    return elementwise(lambda xs, b: _from_task_vector(xs[1], xs[1] - b, eta * xs[0]), [merged, models[0]], base,
                       block, out=merged)


def _cosine_to_delta(merged: torch.Tensor, model: torch.Tensor, base: torch.Tensor, block: int) -> float | None:
    """cos(merged, model - base), block by block."""
    dots = [0.0, 0.0, 0.0]
    flat_merged, flat_model, flat_base = merged.reshape(-1), model.reshape(-1), base.reshape(-1)
    for start in range(0, flat_merged.numel(), block):
        a = flat_merged[start : start + block]
        d = flat_model[start : start + block].float() - flat_base[start : start + block].float()
        dots[0] += torch.dot(a, d).item()
        dots[1] += torch.dot(a, a).item()
        dots[2] += torch.dot(d, d).item()
    return cosine_from_gram([[dots[1], dots[0]], [dots[0], dots[2]]], 0, 1)


# ---------------------------------------------------------------- the registry


@dataclasses.dataclass(frozen=True)
class MergeParams:
    """Every method's knobs; a method reads the ones it uses."""

    weights: tuple[float, ...] | None = None  # one per model; None: equal
    density: float = 1.0  # TIES / DARE: fraction of each task vector kept
    scale: float = 1.0  # lambda: task-vector methods scale the merged task vector
    t: float = 0.5  # SLERP: 0 gives the first model, 1 the second
    eta: float = 1.0  # WARP: 0 gives the base, 1 the SLERP of the task vectors
    seed: int = 0  # DARE's masks

    def weights_for(self, count: int) -> list[float]:
        return list(self.weights) if self.weights is not None else [1.0] * count


MergeFn = Callable[[list[torch.Tensor], "torch.Tensor | None", MergeParams, str], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Method:
    """A registered merge method and what it needs."""

    merge: MergeFn  # (models, base, params, tensor name) -> float32 tensor
    base: str  # "required", "optional" or "unused"
    min_models: int = 1
    max_models: int | None = None
    params: tuple[str, ...] = ()  # the MergeParams fields it reads, for the manifest


METHODS: dict[str, Method] = {
    "linear": Method(lambda xs, b, p, name: linear(xs, p.weights_for(len(xs))), "unused", 1, None, ("weights",)),
    "task_arithmetic": Method(lambda xs, b, p, name: task_arithmetic(xs, b, p.weights_for(len(xs)), p.scale),
                              "required", 1, None, ("weights", "scale")),
    "ties": Method(lambda xs, b, p, name: ties(xs, b, p.weights_for(len(xs)), p.density, p.scale),
                   "required", 1, None, ("weights", "density", "scale")),
    "dare_linear": Method(lambda xs, b, p, name: dare(xs, b, p.weights_for(len(xs)), p.density, p.seed, name,
                                                      "linear", p.scale),
                          "required", 1, None, ("weights", "density", "scale", "seed")),
    "dare_ties": Method(lambda xs, b, p, name: dare(xs, b, p.weights_for(len(xs)), p.density, p.seed, name,
                                                    "ties", p.scale),
                        "required", 1, None, ("weights", "density", "scale", "seed")),
    "slerp": Method(lambda xs, b, p, name: slerp(xs[0], xs[1], p.t, b), "optional", 2, 2, ("t",)),
    "model_stock": Method(lambda xs, b, p, name: model_stock(xs, b, name), "required", 2, None, ()),
    "warp": Method(lambda xs, b, p, name: warp(xs, b, p.eta), "required", 1, None, ("eta",)),
}
