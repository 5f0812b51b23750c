"""The detected stars of the reference frame, as the star picker shows them: where, how bright,
how wide, how isolated, saturated or not, and whether the automatic pick would accept it.

The judging is the pipeline's (core.quality's criteria); this only tabulates it for the keys
that jump from star to star.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Candidate:
    x: float
    y: float
    peak: float  # counts, sky included (what saturation is about)
    fwhm: float  # px, from second moments
    isolation: float  # px to the nearest star at least half as bright (inf: none)
    saturated: bool
    good: bool  # bright, unsaturated with margin, isolated, away from the edges: what `a` may pick


def candidates(image: np.ndarray, noise: float, sky: float, saturation: float | None, box: int,
               n_max: int = 300) -> list[Candidate]:
    """Detected stars, brightest first (at most n_max)."""
    from tui_stack.core import quality

    mask = ~np.isfinite(image)
    stars = quality.find_stars(np.nan_to_num(image), mask, noise)
    n = min(len(stars), n_max)
    if n == 0:
        return []
    order = np.argsort(-stars.peak)[:n]
    sat = np.zeros(len(stars), bool) if saturation is None else stars.peak + sky >= 0.9 * saturation
    good = np.zeros(len(stars), bool)  # what the automatic pick (`a`) chooses among
    good[quality.reference_candidates(stars, image.shape, sky, saturation, box)] = True
    out = []
    for i in order:
        d = np.hypot(stars.x - stars.x[i], stars.y - stars.y[i])
        d[i] = np.inf
        near = d[stars.peak >= 0.5 * stars.peak[i]]
        iso = float(near.min()) if near.size else float("inf")
        out.append(Candidate(float(stars.x[i]), float(stars.y[i]), float(stars.peak[i] + sky), float(stars.fwhm[i]),
                             iso, bool(sat[i]), bool(good[i])))
    return out


def nearest(cands: list[Candidate], x: float, y: float, good_only: bool = False, within: float = np.inf) -> int | None:
    idx = [k for k, c in enumerate(cands) if c.good or not good_only]
    if not idx:
        return None
    k = min(idx, key=lambda k: np.hypot(cands[k].x - x, cands[k].y - y))
    return k if np.hypot(cands[k].x - x, cands[k].y - y) <= within else None


def describe(c: Candidate, k: int, n: int) -> list[str]:
    iso = "alone" if not np.isfinite(c.isolation) else f"{c.isolation:.0f} px"
    verdict = "[red]SATURATED[/]" if c.saturated else "[green]good pick[/]" if c.good else "[yellow]not ideal[/]"
    return [f"star {k + 1}/{n} at x {c.x:.1f} y {c.y:.1f}",
            f"peak {c.peak:.0f}  FWHM {c.fwhm:.1f}",
            f"isolated {iso}  {verdict}"]
