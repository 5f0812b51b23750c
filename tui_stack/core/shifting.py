"""Moving a frame onto the reference grid, with a mask for pixels that came from outside it."""

from __future__ import annotations

import numpy as np

def integer_slices(shape, dx: int, dy: int):
    """Slices (out_y, out_x, in_y, in_x) such that out[y, x] = in[y - dy, x - dx]."""
    h, w = shape

    def axis(n, d):
        d = int(d)
        if abs(d) >= n:
            return None
        return (slice(max(0, d), n + min(0, d)), slice(max(0, -d), n - max(0, d)))

    ay, ax = axis(h, dy), axis(w, dx)
    if ay is None or ax is None:
        return None
    return ay[0], ax[0], ay[1], ax[1]


def applied_shift(dx: float, dy: float, mode: str) -> tuple[float, float]:
    if mode == "integer":
        return int(np.round(dx)), int(np.round(dy))
    return float(dx), float(dy)


def shift_frame(
    data: np.ndarray, mask: np.ndarray | None, dx: float, dy: float, mode: str = "integer"
) -> tuple[np.ndarray, np.ndarray]:
    """Shift by (dx, dy): out[y, x] = in[y - dy, x - dx]. Returns (data, mask); mask True = no data.

    Integer mode rounds the shift and moves pixels (the lab's order-0 scipy shift,
    done as a slice copy). Subpixel mode uses scipy.ndimage.shift with a cubic
    spline; any output pixel whose interpolation touched a masked or outside pixel
    is masked. Masked output pixels hold 0, never a value meant to be combined.
    """
    if mask is None:
        mask = np.zeros(data.shape, dtype=bool)
    if mode == "integer":
        ix, iy = applied_shift(dx, dy, mode)
        out = np.zeros(data.shape, dtype=np.float32)
        out_mask = np.ones(data.shape, dtype=bool)
        sl = integer_slices(data.shape, ix, iy)
        if sl is not None:
            oy, ox, iy_, ix_ = sl
            out[oy, ox] = data[iy_, ix_]
            out_mask[oy, ox] = mask[iy_, ix_]
        out[out_mask] = 0.0
        return out, out_mask
    if mode == "subpixel":
        from scipy import ndimage

        filled = np.where(mask, 0.0, data).astype(np.float32)
        out = ndimage.shift(filled, (dy, dx), order=3, mode="constant", cval=0.0, prefilter=True)
        # Linear spread of the mask marks every pixel a masked input reaches (the spline's
        # own ringing beyond that is below the noise for a star field).
        reach = ndimage.shift(mask.astype(np.float32), (dy, dx), order=1, mode="constant", cval=1.0)
        out_mask = reach > 1e-3
        out = out.astype(np.float32)
        out[out_mask] = 0.0
        return out, out_mask
    raise ValueError(f"unknown shift mode {mode!r}; use 'integer' or 'subpixel'")


def transform_frame(data: np.ndarray, mask: np.ndarray | None, transform,
                    shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Resample a frame onto the reference grid through a transform of the contract
    [a, b, c, d, e, f] (reference (x, y) -> frame (a x + b y + c, d x + e y + f)) or a similarity
    [a, b, tx, ty] (x' = a x - b y + tx, y' = b x + a y + ty), with the same cubic spline as the
    subpixel shift and the same mask rule. `shape`: the reference grid's, if not the frame's."""
    from scipy import ndimage

    if len(transform) == 4:
        a, b, tx, ty = transform
        transform = [a, -b, tx, b, a, ty]
    a, b, c, d, e, f = transform  # the contract's x' = a x + b y + c, y' = d x + e y + f
    if mask is None:
        mask = np.zeros(data.shape, dtype=bool)
    # affine_transform maps output (row, col) = (y, x) to input (row, col)
    matrix = np.array([[e, d], [b, a]])
    offset = (f, c)
    filled = np.where(mask, 0.0, data).astype(np.float32)
    shape = tuple(shape or data.shape)
    out = ndimage.affine_transform(filled, matrix, offset, shape, order=3, mode="constant", cval=0.0, prefilter=True)
    reach = ndimage.affine_transform(mask.astype(np.float32), matrix, offset, shape, order=1, mode="constant",
                                     cval=1.0)
    out_mask = reach > 1e-3
    out = out.astype(np.float32)
    out[out_mask] = 0.0
    return out, out_mask
