"""Registration: where the reference star is in each frame, and the shift that lines it up.

The lab centroids in a fixed 100 px box around the star's reference position; in a
crowded field a brighter star inside that box pulls the fit away. Here each frame is
first located globally by FFT cross-correlation with the reference, then the star is
centroided in a small box at the predicted position, and the two estimates are compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

CENTROID_METHODS = ("com", "1dg", "2dg", "quadratic")


@dataclass
class StarPosition:
    x: float
    y: float
    peak: float  # background-subtracted peak value
    fwhm: float


@dataclass
class FrameShift:
    """Registration of one frame against the reference."""

    centroid_x: float
    centroid_y: float
    shift_x: float
    shift_y: float
    xcorr_shift_x: float
    xcorr_shift_y: float
    flags: list[str] = field(default_factory=list)


def _centroid_func(method: str):
    from photutils import centroids

    funcs = {
        "com": centroids.centroid_com,
        "1dg": centroids.centroid_1dg,
        "2dg": centroids.centroid_2dg,
        "quadratic": centroids.centroid_quadratic,
    }
    if method not in funcs:
        raise ValueError(f"unknown centroid method {method!r}; use one of {', '.join(CENTROID_METHODS)}")
    return funcs[method]


def _prepare_for_xcorr(data: np.ndarray, mask: np.ndarray | None, sky: float, noise: float, binning: int):
    """Binned, sky-subtracted, noise-thresholded, square-rooted image: stars of all brightness
    count, and the binning (a sum) comes first so the rest runs on 1/b² of the pixels."""
    img = data if mask is None or not mask.any() else np.where(mask, np.float32(sky), data)
    b = binning
    if b > 1:
        h, w = (img.shape[0] // b) * b, (img.shape[1] // b) * b
        # whole rows added first, then columns of the b times smaller image: one pass over the
        # frame (26 -> 15 ms on 4096^2; a reshape-sum over two axes takes 33, measured)
        rows = img[0:h:b, :w].copy()
        for i in range(1, b):
            rows += img[i:h:b, :w]
        img = rows[:, 0::b].copy()
        for j in range(1, b):
            img += rows[:, j::b]
    img = img - np.float32(sky * b * b + 3.0 * max(noise, 1e-6) * b)
    np.clip(img, 0.0, None, out=img)
    np.sqrt(img, out=img)
    # zero mean: unrelated star fields then correlate near 0, not at the ~0.35 of two positive images
    img -= img.mean(dtype=np.float64)
    return img


def xcorr_binning(shape: tuple[int, int]) -> int:
    """Bin big frames so the FFT stays near 1024²: the offset only seeds the centroid box."""
    return max(1, int(np.ceil(max(shape) / 1024)))


class XcorrReference:
    """The reference frame's Fourier transform, computed once and reused for every frame."""

    def __init__(self, data, mask, sky: float, noise: float):
        import scipy.fft

        self.shape = data.shape
        self.binning = xcorr_binning(data.shape)
        img = _prepare_for_xcorr(data, mask, sky, noise, self.binning)
        self._fft = scipy.fft.rfft2(img, workers=-1)
        self._norm = float(np.sqrt((img.astype(np.float64) ** 2).sum()))
        self._img_shape = img.shape

    def prepare(self, data, mask, sky: float, noise: float):
        """A frame made ready for `offset` (once, for both the straight and the flipped match)."""
        return _prepare_for_xcorr(data, mask, sky, noise, self.binning)

    def offset(self, img, flip: bool = False) -> tuple[float, float, float]:
        """Shift (dx, dy) = reference position - frame position of a prepared frame, and the
        peak's correlation (0..1). With `flip` the frame is first turned by 180 degrees
        (a meridian flip)."""
        import scipy.fft

        if flip:
            img = img[::-1, ::-1]
        norm = float(np.sqrt((img.astype(np.float64) ** 2).sum())) * self._norm
        if norm == 0:
            return float("nan"), float("nan"), 0.0
        corr = scipy.fft.irfft2(self._fft * np.conj(scipy.fft.rfft2(img, workers=-1)), s=self._img_shape, workers=-1)
        iy, ix = np.unravel_index(int(np.argmax(corr)), corr.shape)
        peak = float(corr[iy, ix]) / norm
        ny, nx = corr.shape

        def parabola(cm, c0, cp):
            den = cm - 2 * c0 + cp
            return 0.0 if den == 0 else 0.5 * (cm - cp) / den

        fy = parabola(corr[(iy - 1) % ny, ix], corr[iy, ix], corr[(iy + 1) % ny, ix])
        fx = parabola(corr[iy, (ix - 1) % nx], corr[iy, ix], corr[iy, (ix + 1) % nx])
        dy = iy if iy <= ny // 2 else iy - ny
        dx = ix if ix <= nx // 2 else ix - nx
        b = self.binning
        # A bin's centre sits (b-1)/2 px into it in both frames, so the offset is just scaled.
        return (dx + fx) * b, (dy + fy) * b, peak


def _box(shape, x: float, y: float, size: int):
    half = size // 2
    xc, yc = int(round(x)), int(round(y))
    x0, x1 = max(0, xc - half), min(shape[1], xc + half + 1)
    y0, y1 = max(0, yc - half), min(shape[0], yc + half + 1)
    return y0, y1, x0, x1


def _fwhm_from_moments(cut: np.ndarray) -> float:
    cut = np.clip(cut, 0, None).astype(np.float64)
    tot = cut.sum()
    if tot <= 0:
        return float("nan")
    yy, xx = np.indices(cut.shape)
    cx, cy = (cut * xx).sum() / tot, (cut * yy).sum() / tot
    var = ((cut * ((xx - cx) ** 2 + (yy - cy) ** 2)).sum() / tot) / 2.0
    return float(2.3548 * np.sqrt(max(var, 0.0)))


def find_star(
    data: np.ndarray,
    mask: np.ndarray | None,
    x: float,
    y: float,
    search: int,
    noise: float,
    nsigma: float = 10.0,
) -> tuple[float, float, float] | None:
    """The significant local maximum nearest to (x, y) within a `search` box: (x, y, peak).

    Nearest, not brightest: a brighter neighbour in the box must not capture the search.
    `data` must be sky-subtracted.
    """
    from scipy import ndimage

    y0, y1, x0, x1 = _box(data.shape, x, y, search)
    if y1 - y0 < 3 or x1 - x0 < 3:
        return None
    cut = data[y0:y1, x0:x1].astype(np.float32)
    if mask is not None:
        cut = np.where(mask[y0:y1, x0:x1], 0.0, cut)
    smooth = ndimage.gaussian_filter(cut, 1.0)
    # Smoothing by a unit Gaussian lowers white noise by 2*sqrt(pi).
    thresh = nsigma * noise / (2.0 * np.sqrt(np.pi))
    peaks = (smooth == ndimage.maximum_filter(smooth, size=5)) & (smooth > thresh)
    # A peak on the cut-out's edge may be the flank of a star outside it.
    peaks[[0, -1], :] = False
    peaks[:, [0, -1]] = False
    py, px = np.nonzero(peaks)
    if px.size == 0:
        return None
    d2 = (px + x0 - x) ** 2 + (py + y0 - y) ** 2
    i = int(np.argmin(d2))
    return float(px[i] + x0), float(py[i] + y0), float(cut[py[i], px[i]])


def find_stars_near(data: np.ndarray, mask: np.ndarray | None, xy: np.ndarray, search: int, noise: float,
                    nsigma: float = 10.0) -> np.ndarray:
    """find_star for many positions at once: (k, 3) of x, y, peak, NaN where none is found.

    Boxes inside the frame are filtered as one stack (the same filters on each slice, so the
    same answer as find_star: 80 stars 18 -> 2 ms, measured); boxes cut by an edge go one by one.
    """
    from scipy import ndimage

    xy = np.asarray(xy, float).reshape(-1, 2)
    out = np.full((len(xy), 3), np.nan)
    if not len(xy):
        return out
    h, w = data.shape
    half = search // 2
    xc, yc = np.rint(xy[:, 0]).astype(int), np.rint(xy[:, 1]).astype(int)
    inside = (xc - half >= 0) & (xc + half + 1 <= w) & (yc - half >= 0) & (yc + half + 1 <= h)
    for i in np.flatnonzero(~inside):
        f = find_star(data, mask, xy[i, 0], xy[i, 1], search, noise, nsigma)
        if f is not None:
            out[i] = f
    idx = np.flatnonzero(inside)
    if not idx.size or 2 * half + 1 < 3:
        return out
    off = np.arange(-half, half + 1)
    yy = yc[idx, None, None] + off[None, :, None]
    xx = xc[idx, None, None] + off[None, None, :]
    cut = data[yy, xx].astype(np.float32)
    if mask is not None:
        cut[mask[yy, xx]] = 0.0
    smooth = ndimage.gaussian_filter(cut, (0, 1.0, 1.0))
    thresh = nsigma * noise / (2.0 * np.sqrt(np.pi))  # as find_star
    peaks = (smooth == ndimage.maximum_filter(smooth, size=(1, 5, 5))) & (smooth > thresh)
    peaks[:, [0, -1], :] = False
    peaks[:, :, [0, -1]] = False
    k, py, px = np.nonzero(peaks)
    if not k.size:
        return out
    d2 = (px - half - (xy[idx[k], 0] - xc[idx[k]])) ** 2 + (py - half - (xy[idx[k], 1] - yc[idx[k]])) ** 2
    # the nearest peak of each box: sort by (box, distance), keep each box's first
    order = np.lexsort((d2, k))
    k, py, px = k[order], py[order], px[order]
    first = np.r_[True, k[1:] != k[:-1]]
    k, py, px = k[first], py[first], px[first]
    out[idx[k], 0] = xc[idx[k]] - half + px
    out[idx[k], 1] = yc[idx[k]] - half + py
    out[idx[k], 2] = cut[k, py, px]
    return out


def centroid_at(
    data: np.ndarray, mask: np.ndarray | None, x: float, y: float, box: int, method: str = "2dg"
) -> tuple[float, float]:
    """Centroid in a box of `box` px centred on (x, y), with the box's edge level removed."""
    y0, y1, x0, x1 = _box(data.shape, x, y, box)
    if method == "2dg" and y1 - y0 == box and x1 - x0 == box:  # inside the frame: the fast fit
        from tui_stack.core import gaussfit

        cx, cy = gaussfit.centroids_2dg(data, mask, [x], [y], box)[0]
        return float(cx), float(cy)
    func = _centroid_func(method)
    cut = data[y0:y1, x0:x1].astype(np.float64)
    cmask = None if mask is None else mask[y0:y1, x0:x1]
    edge = np.concatenate([cut[0], cut[-1], cut[1:-1, 0], cut[1:-1, -1]])
    cut = cut - np.median(edge)
    if method == "com":
        cut = np.clip(cut, 0, None)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cx, cy = func(cut, mask=cmask)
    return float(cx + x0), float(cy + y0)


def fit_box_for(fwhm: float) -> int:
    """An odd centroid box of about 3 FWHM: the star, little of its neighbours."""
    if not np.isfinite(fwhm):
        return 15
    size = int(np.clip(round(3.0 * fwhm), 7, 41))
    return size if size % 2 else size + 1


def locate_reference_star(
    data: np.ndarray, mask: np.ndarray | None, x: float, y: float, search: int, method: str, noise: float
) -> StarPosition | None:
    """The reference star near the user's (x, y): nearest significant peak, then centroid."""
    found = find_star(data, mask, x, y, search, noise)
    if found is None:
        return None
    px, py, peak = found
    y0, y1, x0, x1 = _box(data.shape, px, py, 21)
    fwhm = _fwhm_from_moments(data[y0:y1, x0:x1] - np.median(data[y0:y1, x0:x1]))
    box = fit_box_for(fwhm)
    cx, cy = centroid_at(data, mask, px, py, box, method)
    if not (np.isfinite(cx) and np.isfinite(cy)) or np.hypot(cx - px, cy - py) > box / 2:
        return None
    return StarPosition(cx, cy, peak, fwhm)


def measure_frame_shift(
    data: np.ndarray,
    mask: np.ndarray | None,
    noise: float,
    ref_star: StarPosition,
    xcorr_dx: float,
    xcorr_dy: float,
    method: str,
    binning: int = 1,
) -> FrameShift:
    """Centroid the reference star's counterpart at the position the cross-correlation predicts."""
    flags: list[str] = []
    if not (np.isfinite(xcorr_dx) and np.isfinite(xcorr_dy)):
        return FrameShift(float("nan"), float("nan"), float("nan"), float("nan"), xcorr_dx, xcorr_dy, ["no_stars"])
    px, py = ref_star.x - xcorr_dx, ref_star.y - xcorr_dy
    h, w = data.shape
    box = fit_box_for(ref_star.fwhm)
    if not (box / 2 <= px < w - box / 2 and box / 2 <= py < h - box / 2):
        return FrameShift(float("nan"), float("nan"), xcorr_dx, xcorr_dy, xcorr_dx, xcorr_dy, ["star_off_frame"])
    found = find_star(data, mask, px, py, 2 * (2 + binning) + 1, noise, nsigma=5.0)
    if found is None:
        return FrameShift(float("nan"), float("nan"), xcorr_dx, xcorr_dy, xcorr_dx, xcorr_dy, ["star_not_found"])
    cx, cy = centroid_at(data, mask, found[0], found[1], box, method)
    if not (np.isfinite(cx) and np.isfinite(cy)):
        return FrameShift(float("nan"), float("nan"), xcorr_dx, xcorr_dy, xcorr_dx, xcorr_dy, ["star_not_found"])
    sx, sy = ref_star.x - cx, ref_star.y - cy
    if np.hypot(sx - xcorr_dx, sy - xcorr_dy) > max(1.0, float(binning)):
        flags.append("methods_disagree")
    return FrameShift(cx, cy, sx, sy, xcorr_dx, xcorr_dy, flags)


def lab_centroid(data: np.ndarray, x: float, y: float, box: int = 100) -> tuple[float, float]:
    """The lab's recipe, kept for comparison: centroid_2dg over a fixed box at the reference position."""
    from photutils.centroids import centroid_2dg

    y0, y1, x0, x1 = _box(data.shape, x, y, box)
    cx, cy = centroid_2dg(data[y0:y1, x0:x1])
    return float(cx + x0), float(cy + y0)


def match_stars(
    data: np.ndarray, mask: np.ndarray | None, noise: float, ref_xy, shift_x: float, shift_y: float,
    search: int = 21, box: int = 9, method: str = "com", predicted: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Reference stars found again in a frame near where the shift puts them.

    Returns (reference positions, frame centroids), both (k, 2) arrays of x, y. With "2dg"
    the stars whose box lies inside the frame are fitted together (core.gaussfit)."""
    from tui_stack.core import gaussfit

    ref_xy = np.asarray(ref_xy, float).reshape(-1, 2)
    if predicted is None:  # where the shift alone puts them
        predicted = ref_xy - [shift_x, shift_y]
    hits = find_stars_near(data, mask, predicted, search, noise, nsigma=5.0)
    ok = np.isfinite(hits[:, 0])
    found_ref, found = ref_xy[ok], hits[ok, :2]
    pts = np.full(found.shape, np.nan)
    half = box // 2
    h, w = data.shape
    inside = ((np.rint(found[:, 0]) - half >= 0) & (np.rint(found[:, 0]) + half < w)
              & (np.rint(found[:, 1]) - half >= 0) & (np.rint(found[:, 1]) + half < h))
    if method == "2dg" and inside.any():
        pts[inside] = gaussfit.centroids_2dg(data, mask, found[inside, 0], found[inside, 1], box)
    for i in np.flatnonzero(~inside if method == "2dg" else np.ones(len(found), bool)):
        pts[i] = centroid_at(data, mask, found[i, 0], found[i, 1], box, method)
    ok = np.isfinite(pts).all(axis=1)
    return found_ref[ok], pts[ok]


def fit_rotation(ref_pts: np.ndarray, pts: np.ndarray) -> tuple[float, float]:
    """Rotation (degrees) taking the reference positions to the frame's, shift removed, and its
    standard error. Least squares in complex form, refitted without stars whose residual is
    over 3 robust sigma (a neighbour pulled their centroid); NaN with fewer than 3 stars."""
    keep = np.ones(len(pts), bool)
    angle, err = float("nan"), float("nan")
    for _ in range(3):
        if keep.sum() < 3:
            return float("nan"), float("nan")
        a = ref_pts[keep, 0] + 1j * ref_pts[keep, 1]
        b = pts[keep, 0] + 1j * pts[keep, 1]
        a0, b0 = a - a.mean(), b - b.mean()
        rot = np.sum(np.conj(a0) * b0)
        rot /= abs(rot)
        angle = float(np.degrees(np.angle(rot)))
        resid_all = np.abs((pts[:, 0] + 1j * pts[:, 1]) - b.mean() - rot * ((ref_pts[:, 0] + 1j * ref_pts[:, 1]) - a.mean()))
        sigma = 1.4826 * np.median(resid_all[keep]) + 1e-3
        err = float(np.degrees(sigma / np.sqrt(np.sum(np.abs(a0) ** 2))))
        new_keep = resid_all < 3 * sigma
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return angle, err


@dataclass
class TranslationFit:
    dx: float
    dy: float
    n_matched: int
    n_used: int  # after rejecting outliers
    rms: float  # residual RMS of the stars used, px


def fit_translation(ref_pts: np.ndarray, pts: np.ndarray, weights: np.ndarray | None = None) -> TranslationFit:
    """Shift = weighted mean over matched stars of (reference - frame) position, after
    rejecting stars more than 3 robust sigma from the median offset (a neighbour, a cosmic
    ray, a variable star). Weights: brighter stars centroid better."""
    n = len(pts)
    if n == 0:
        return TranslationFit(float("nan"), float("nan"), 0, 0, float("nan"))
    d = ref_pts - pts
    w = np.ones(n) if weights is None else np.asarray(weights, float)
    keep = np.ones(n, bool)
    centre = np.median(d, axis=0)
    for _ in range(5):
        r = np.hypot(*(d - centre).T)
        sigma = 1.4826 * np.median(r[keep]) + 1e-4
        new_keep = r < max(3 * sigma, 0.01)
        if not new_keep.any():
            break
        centre = np.average(d[new_keep], axis=0, weights=w[new_keep])
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    resid = np.hypot(*(d[keep] - centre).T)
    rms = float(np.sqrt(np.mean(resid**2))) if keep.any() else float("nan")
    return TranslationFit(float(centre[0]), float(centre[1]), n, int(keep.sum()), rms)


@dataclass
class SimilarityFit:
    """frame position = c * reference position + t, in complex form (x + iy): c = s e^(i theta)."""

    c: complex
    t: complex
    n_matched: int
    n_used: int
    rms: float  # residual RMS of the stars used, px

    @property
    def rotation(self) -> float:
        return float(np.degrees(np.angle(self.c)))

    @property
    def scale(self) -> float:
        return float(abs(self.c))

    def apply(self, xy: np.ndarray) -> np.ndarray:
        z = self.c * (xy[:, 0] + 1j * xy[:, 1]) + self.t
        return np.stack([z.real, z.imag], axis=1)

    def as_list(self) -> list[float]:
        """[a, b, tx, ty]: x' = a x - b y + tx, y' = b x + a y + ty."""
        return [float(self.c.real), float(self.c.imag), float(self.t.real), float(self.t.imag)]

    @classmethod
    def from_list(cls, transform) -> "SimilarityFit":
        a, b, tx, ty = transform
        return cls(complex(a, b), complex(tx, ty), 0, 0, float("nan"))


def fit_similarity(ref_pts: np.ndarray, pts: np.ndarray, weights: np.ndarray | None = None) -> SimilarityFit:
    """Rotation, scale and shift taking reference positions to the frame's: weighted least
    squares in complex form, refitted without stars over 3 robust sigma from the fit (as
    fit_translation). Needs 3 or more stars (NaN otherwise)."""
    n = len(pts)
    nan = SimilarityFit(complex(np.nan, np.nan), complex(np.nan, np.nan), n, 0, float("nan"))
    if n < 3:
        return nan
    a = ref_pts[:, 0] + 1j * ref_pts[:, 1]
    b = pts[:, 0] + 1j * pts[:, 1]
    w = np.ones(n) if weights is None else np.asarray(weights, float)
    keep = np.ones(n, bool)
    c = t = None
    for _ in range(5):
        if keep.sum() < 3:
            return nan
        wk = w[keep]
        am, bm = np.average(a[keep], weights=wk), np.average(b[keep], weights=wk)
        a0, b0 = a[keep] - am, b[keep] - bm
        c = np.sum(wk * np.conj(a0) * b0) / np.sum(wk * np.abs(a0) ** 2)
        t = bm - c * am
        r = np.abs(b - (c * a + t))
        sigma = 1.4826 * np.median(r[keep]) + 1e-4
        new_keep = r < max(3 * sigma, 0.01)
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    r = np.abs(b - (c * a + t))[keep]
    return SimilarityFit(complex(c), complex(t), n, int(keep.sum()), float(np.sqrt(np.mean(r**2))))


def star_box(fwhm: float) -> int:
    """Centroid box for many-star matching: about 2 FWHM, odd (7 px for FWHM 3.5: the best of
    5-11 on the synthetic fields, measured)."""
    if not np.isfinite(fwhm):
        return 7
    size = int(np.clip(round(2.0 * fwhm), 5, 21))
    return size if size % 2 else size + 1


# ---------------------------------------------------------------- general transforms (#17)


@dataclass
class Affine:
    """Reference pixel (x, y) -> the frame's own pixel (x', y'), 0-based, as read from disk:
    x' = a x + b y + c, y' = d x + e y + f (the transform contract, notes/TRANSFORM_CONTRACT).

    A mirrored frame has a negative determinant. Its rotation is read as: the reference
    flipped top to bottom (y -> -y), then turned by `rotation`, then scaled."""

    m: np.ndarray  # (2, 2) [[a, b], [d, e]]
    t: np.ndarray  # (2,) [c, f]

    @classmethod
    def from_list(cls, v) -> "Affine":
        """The contract's 6 numbers, or a SimilarityFit's 4 ([a, b, tx, ty])."""
        v = [float(x) for x in v]
        if len(v) == 4:
            a, b, tx, ty = v
            v = [a, -b, tx, b, a, ty]
        if len(v) != 6:
            raise ValueError(f"a transform has 6 numbers (or a similarity's 4), not {len(v)}")
        return cls(np.array([[v[0], v[1]], [v[3], v[4]]]), np.array([v[2], v[5]]))

    @classmethod
    def shift(cls, dx: float, dy: float) -> "Affine":
        """A pure shift as SPEC defines it (frame pixel = reference pixel - shift)."""
        return cls(np.eye(2), np.array([-dx, -dy], float))

    @classmethod
    def similarity(cls, c: complex, t: complex, mirrored: bool = False) -> "Affine":
        """frame = c * ref + t in complex form (x + iy); mirrored: c * conj(ref) + t."""
        m = np.array([[c.real, -c.imag], [c.imag, c.real]])
        if mirrored:
            m = m @ np.diag([1.0, -1.0])
        return cls(m, np.array([t.real, t.imag]))

    def as_list(self) -> list[float]:
        (a, b), (d, e) = self.m
        return [float(a), float(b), float(self.t[0]), float(d), float(e), float(self.t[1])]

    def apply(self, xy) -> np.ndarray:
        xy = np.asarray(xy, float).reshape(-1, 2)
        return xy @ self.m.T + self.t

    def inverse(self) -> "Affine":
        mi = np.linalg.inv(self.m)
        return Affine(mi, -mi @ self.t)

    def then(self, other: "Affine") -> "Affine":
        """This transform followed by `other`."""
        return Affine(other.m @ self.m, other.m @ self.t + other.t)

    @property
    def mirrored(self) -> bool:
        return bool(np.linalg.det(self.m) < 0)

    @property
    def area(self) -> float:
        """Frame pixels per reference pixel, by area (a 2x2-binned frame: 0.25). Resampled onto
        the reference grid, a frame's star fluxes are its own divided by this."""
        return float(abs(np.linalg.det(self.m)))

    def _unmirrored(self) -> np.ndarray:
        return self.m @ np.diag([1.0, -1.0]) if self.mirrored else self.m

    @property
    def scale(self) -> float:
        """Frame px per reference px (geometric mean over the axes)."""
        return float(np.sqrt(abs(np.linalg.det(self.m))))

    @property
    def rotation(self) -> float:
        """Degrees, in (-180, 180], of the nearest similarity."""
        (a, b), (d, e) = self._unmirrored()
        return float(np.degrees(np.arctan2(d - b, a + e)))

    @property
    def axis_ratio(self) -> float:
        """Largest / smallest scale along any direction: 1 for a similarity."""
        s = np.linalg.svd(self.m, compute_uv=False)
        return float(s[0] / s[1])

    def moved(self, xy) -> np.ndarray:
        """The shift (reference - frame position) at each point."""
        xy = np.asarray(xy, float).reshape(-1, 2)
        return xy - self.apply(xy)


@dataclass
class TransformFit:
    transform: Affine
    n_matched: int
    n_used: int
    rms: float  # residual RMS of the stars used, frame px
    used: np.ndarray = field(repr=False, default=None)  # bool per matched pair
    pairs: tuple = field(repr=False, default=None)  # (reference, frame) positions matched (refine_transform)

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.rms))


def _solve_transform(a: np.ndarray, b: np.ndarray, w: np.ndarray, kind: str, mirrored: bool) -> Affine:
    """Weighted least squares: reference points a -> frame points b, (n, 2) each."""
    am, bm = np.average(a, axis=0, weights=w), np.average(b, axis=0, weights=w)
    a0, b0 = a - am, b - bm
    if kind == "affine":
        sw = np.sqrt(w)[:, None]
        m = np.linalg.lstsq(a0 * sw, b0 * sw, rcond=None)[0].T
    elif kind == "similarity":
        za = a0[:, 0] + 1j * a0[:, 1]
        if mirrored:
            za = np.conj(za)
        zb = b0[:, 0] + 1j * b0[:, 1]
        c = np.sum(w * np.conj(za) * zb) / np.sum(w * np.abs(za) ** 2)
        m = Affine.similarity(complex(c), 0j, mirrored).m
    elif kind == "translation":
        m = np.eye(2)
    else:
        raise ValueError(f"unknown transform kind {kind!r}; use translation, similarity or affine")
    return Affine(m, bm - m @ am)


def fit_transform(ref_pts, pts, weights=None, kind: str = "similarity", mirrored: bool = False) -> TransformFit:
    """A similarity (rotation, scale, shift; `mirrored` for the other parity) or a full affine
    transform taking reference positions to the frame's, refitted without stars over 3 robust
    sigma from the fit (as fit_similarity). NaN transform with too few stars."""
    a = np.asarray(ref_pts, float).reshape(-1, 2)
    b = np.asarray(pts, float).reshape(-1, 2)
    n = len(a)
    need = 3 if kind == "affine" else 2
    nan = TransformFit(Affine(np.full((2, 2), np.nan), np.full(2, np.nan)), n, 0, float("nan"), np.zeros(n, bool))
    if n < need + 1:
        return nan
    w = np.ones(n) if weights is None else np.asarray(weights, float)
    keep = np.ones(n, bool)
    tr = None
    for _ in range(6):
        if keep.sum() < need + 1:
            return nan
        tr = _solve_transform(a[keep], b[keep], w[keep], kind, mirrored)
        r = np.hypot(*(b - tr.apply(a)).T)
        sigma = 1.4826 * np.median(r[keep]) + 1e-4
        new_keep = r < max(3 * sigma, 0.01)
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    r = np.hypot(*(b - tr.apply(a)).T)[keep]
    return TransformFit(tr, n, int(keep.sum()), float(np.sqrt(np.mean(r**2))), keep)


def pair_stars(ref_xy, frame_xy, transform: Affine, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices (i_ref, i_frame) of reference stars that the transform puts within `tolerance`
    frame px of a frame star, each frame star used once (the nearest)."""
    from scipy.spatial import cKDTree

    ref_xy = np.asarray(ref_xy, float).reshape(-1, 2)
    frame_xy = np.asarray(frame_xy, float).reshape(-1, 2)
    if not len(ref_xy) or not len(frame_xy):
        return np.array([], int), np.array([], int)
    d, j = cKDTree(frame_xy).query(transform.apply(ref_xy), distance_upper_bound=tolerance)
    i = np.flatnonzero(np.isfinite(d))
    if not len(i):
        return i, i
    j, d = j[i], d[i]
    order = np.lexsort((d, j))  # per frame star, the nearest reference star first
    i, j = i[order], j[order]
    first = np.r_[True, j[1:] != j[:-1]]
    return i[first], j[first]


def refine_transform(data: np.ndarray, mask: np.ndarray | None, noise: float, ref_xy, guess: Affine,
                     kind: str = "similarity", weights=None, search: int = 7, box: int = 7, method: str = "2dg",
                     iterations: int = 2) -> TransformFit:
    """The many-star fit from a first guess: each reference star centroided in the frame where
    the transform so far puts it, then the transform refitted to them all (twice: the second
    pass finds the stars the guess put just outside the search box)."""
    ref_xy = np.asarray(ref_xy, float).reshape(-1, 2)
    w_of = None if weights is None else dict(zip(map(tuple, ref_xy), np.asarray(weights, float)))
    h, w = data.shape
    fit = TransformFit(guess, 0, 0, float("nan"))
    mirrored = guess.mirrored
    for _ in range(iterations):
        pred = guess.apply(ref_xy)
        inside = (pred[:, 0] >= 0) & (pred[:, 0] < w) & (pred[:, 1] >= 0) & (pred[:, 1] < h)
        if inside.sum() < 4:
            break
        ref_pts, pts = match_stars(data, mask, noise, ref_xy[inside], 0.0, 0.0, search=search, box=box,
                                   method=method, predicted=pred[inside])
        wts = None if w_of is None else [w_of[tuple(p)] for p in ref_pts]
        new = fit_transform(ref_pts, pts, wts, kind, mirrored)
        if not new.ok:
            break
        new.pairs = (ref_pts, pts)
        fit, guess = new, new.transform
    return fit


# ---------------------------------------------------------------- lossless turns and mirrors

DIHEDRAL = tuple(np.array(m, float) for m in (
    [[1, 0], [0, 1]], [[-1, 0], [0, -1]], [[0, -1], [1, 0]], [[0, 1], [-1, 0]],  # turns by 0, 180, +-90
    [[-1, 0], [0, 1]], [[1, 0], [0, -1]], [[0, 1], [1, 0]], [[0, -1], [-1, 0]],  # mirrors
))


def dihedral_part(transform: Affine, max_angle: float = 0.05, max_scale: float = 1e-3) -> np.ndarray | None:
    """The exact quarter-turn and/or mirror (a 2x2 matrix of 0 and +-1) that the transform is,
    up to a shift, within `max_angle` degrees and `max_scale` of scale; None if it is not one."""
    if abs(transform.scale - 1) > max_scale or transform.axis_ratio - 1 > max_scale:
        return None
    for d in DIHEDRAL:
        rest = Affine(transform.m @ d.T, np.zeros(2))  # d is orthogonal: d^-1 = d^T
        if not rest.mirrored and abs(rest.rotation) <= max_angle:
            return d.copy()
    return None


def reorient_offset(matrix: np.ndarray, frame_shape) -> np.ndarray:
    """o in: frame pixel = matrix @ reoriented pixel + o (what reorient does)."""
    h, w = frame_shape
    return np.array([(w - 1) if (matrix[0] < 0).any() else 0, (h - 1) if (matrix[1] < 0).any() else 0], float)


def reorient(arr: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The frame turned by quarter turns and/or mirrored, exactly (views of the array, no
    resampling): out[y, x] = arr[y', x'] with (x', y') = matrix @ (x, y) + reorient_offset."""
    m = np.rint(matrix).astype(int)
    if m[0, 0] != 0:  # no swap of axes
        return arr[:: m[1, 1], :: m[0, 0]]
    # x' = m01 y + ox, y' = m10 x + oy: out[y, x] = arr[m10 x + oy, m01 y + ox] = (flipped arr).T[y, x]
    return arr[:: m[1, 0], :: m[0, 1]].T


def on_shape(data: np.ndarray, mask: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    """A frame cut or padded at its far edges to `shape` (a non-square sensor turned by a quarter
    turn): pixel (x, y) stays (x, y), padding masked. The arrays themselves if already that shape."""
    if data.shape == tuple(shape):
        return data, mask
    h, w = min(shape[0], data.shape[0]), min(shape[1], data.shape[1])
    out = np.zeros(shape, data.dtype)
    out_mask = np.ones(shape, bool)
    out[:h, :w] = data[:h, :w]
    out_mask[:h, :w] = mask[:h, :w]
    return out, out_mask


def reoriented_transform(transform: Affine, matrix: np.ndarray, frame_shape) -> Affine:
    """The transform from the reference to the reoriented frame (reorient(frame, matrix))."""
    to_frame = Affine(np.asarray(matrix, float), reorient_offset(matrix, frame_shape))
    return transform.then(to_frame.inverse())


@dataclass
class GeometryResult:
    """A frame's registration when a shift alone does not do: the first guess and its refinement."""

    transform: Affine | None  # reference -> frame; None: no match
    fit: TransformFit | None
    source: str  # "pattern", "wcs" or "" (none found)
    votes: int = 0
    n_pattern: int = 0  # stars the first guess put on stars


def solve_geometry(data: np.ndarray, mask: np.ndarray | None, noise: float, ref_list, frame_list, reg_xy,
                   reg_weights=None, kind: str = "similarity", box: int = 7, method: str = "2dg",
                   guess: Affine | None = None, source: str = "wcs", fwhm: float | None = None) -> GeometryResult:
    """First guess (`guess`, e.g. from the two WCSs, checked against the star lists; else
    star-pattern matching of the two star lists, brightest first) refined by the many-star
    fit on the reference's registration stars `reg_xy`. `data` is the sky-subtracted frame.
    With `fwhm` (the reference's) the centroid box follows the frame's plate scale."""
    from tui_stack.core import patterns

    ref_list = np.asarray(ref_list, float).reshape(-1, 2)
    frame_list = np.asarray(frame_list, float).reshape(-1, 2)

    def from_guess():
        # a WCS can be off by a few px: the stars correct it before it is trusted
        i, j = pair_stars(ref_list[: patterns.N_VERIFY], frame_list[: patterns.N_VERIFY], guess, 10.0)
        if len(i) >= patterns.MIN_MATCHED:
            fit = fit_transform(ref_list[i], frame_list[j], kind="similarity", mirrored=guess.mirrored)
            if fit.ok:
                return fit.transform, 0, fit.n_used, source
        return None

    def from_patterns():
        m = patterns.match_patterns(ref_list, frame_list)
        return None if m is None else (m.transform, m.votes, m.n_matched, "pattern")

    # a WCS that gives the pointing but not the turn (a mount's or camera driver's) pairs the
    # stars near the pointing and no others: the refined fit fails, and the patterns decide
    result = GeometryResult(None, None, "")
    for first_guess in ([from_guess] if guess is not None else []) + [from_patterns]:
        found = first_guess()
        if found is None:
            continue
        first, votes, n_first, src = found
        if fwhm is not None:
            box = star_box(fwhm * first.scale)
        fit = refine_transform(data, mask, noise, reg_xy, first, kind="similarity", weights=reg_weights, box=box,
                               method=method)
        if kind == "affine" and fit.ok:
            fit = refine_transform(data, mask, noise, reg_xy, fit.transform, kind="affine", weights=reg_weights,
                                   box=box, method=method, iterations=1)
        if fit.ok:
            return GeometryResult(fit.transform, fit, src, votes, n_first)
        if result.transform is None:
            result = GeometryResult(first, None, src, votes, n_first)
    return result


def celestial_wcs(header):
    """The header's celestial WCS, or None (no WCS, not celestial, or unreadable)."""
    import warnings

    from astropy.wcs import WCS

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w = WCS(header, naxis=2)
    except Exception:
        return None
    return w if w.has_celestial and w.celestial.pixel_n_dim == 2 else None


def wcs_transform(ref_wcs, frame_wcs, ref_shape) -> Affine | None:
    """The reference -> frame transform the two WCSs imply: a 5 x 5 grid over the reference
    taken to the sky and back into the frame, and an affine transform fitted to it (exact for
    TAN; a distorted WCS gives its best linear part). None if they cannot be compared."""
    h, w = ref_shape
    gx, gy = np.meshgrid(np.linspace(0, w - 1, 5), np.linspace(0, h - 1, 5))
    ref_xy = np.column_stack([gx.ravel(), gy.ravel()])
    try:
        sky = ref_wcs.celestial.pixel_to_world(ref_xy[:, 0], ref_xy[:, 1])
        fx, fy = frame_wcs.celestial.world_to_pixel(sky)
    except Exception:
        return None
    frame_xy = np.column_stack([fx, fy])
    if not np.isfinite(frame_xy).all():
        return None
    return _solve_transform(ref_xy, frame_xy, np.ones(len(ref_xy)), "affine", False)
