"""`tui-stack combine`: frames already aligned, combined as imcombine / ccdproc.combine would."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tui_stack import __version__
from tui_stack.errors import InputError


def _read_column_file(path: Path, n: int, ncols: int, what: str) -> np.ndarray:
    try:
        rows = [ln.split("#")[0].split() for ln in path.read_text(encoding="utf-8").splitlines()]
    except OSError as exc:
        raise InputError(f"{path}: cannot read {what} file ({exc.strerror})") from None
    rows = [r for r in rows if r]
    if len(rows) != n or any(len(r) != ncols for r in rows):
        raise InputError(f"{path}: {what} file needs {n} lines of {ncols} number(s), one per frame")
    try:
        return np.array([[float(v) for v in r] for r in rows])
    except ValueError as exc:
        raise InputError(f"{path}: {what} file: {exc}") from None


def _keyword_scales(infos, key: str) -> np.ndarray:
    """scale_i = value(first frame) / value(frame i) of a header keyword such as EXPTIME."""
    from astropy.io import fits

    values = []
    for path, idx, _ in infos:
        hdr = fits.getheader(path, idx)
        v = hdr.get(key, fits.getheader(path, 0).get(key) if idx else None)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
            raise InputError(f"{path.name}: header keyword {key} is missing or not a positive number")
        values.append(float(v))
    return values[0] / np.array(values)


def _number_or_keyword(text: str):
    try:
        return float(text)
    except ValueError:
        return text.upper()


def combine_files(args, console) -> Path:
    from astropy.io import fits

    from tui_stack.config import parse_size
    from tui_stack.core import combine, io

    paths = [Path(p) for p in args.files]
    if len({p.resolve() for p in paths}) != len(paths):
        raise InputError("the same file is given twice")
    out = Path(args.out)
    if out.resolve() in {p.resolve() for p in paths}:
        raise InputError(f"{out}: output would overwrite an input file")
    if out.exists() and not args.overwrite:
        raise InputError(f"{out}: exists; pass --overwrite to replace it")
    infos = []
    for p in paths:
        hdul = io.open_fits(p)
        try:
            idx = io._image_hdu_index(hdul, p)
            shape = hdul[idx].shape
        finally:
            hdul.close()
        infos.append((p, idx, shape))
    io.check_shapes([(p, s) for p, _, s in infos])
    n = len(paths)
    if args.scale and args.scale_keyword:
        raise InputError("give --scale or --scale-keyword, not both")
    scales = _read_column_file(args.scale, n, 1, "scale")[:, 0] if args.scale else np.ones(n)
    if args.scale_keyword:
        scales = _keyword_scales(infos, args.scale_keyword.upper())
    zeros = _read_column_file(args.zero, n, 1, "zero")[:, 0] if args.zero else np.zeros(n)
    offsets = _read_column_file(args.offsets, n, 2, "offsets").astype(int) if args.offsets else np.zeros((n, 2), int)
    # IRAF style: the output grows to hold every frame at its offset.
    ox, oy = offsets[:, 0] - offsets[:, 0].min(), offsets[:, 1] - offsets[:, 1].min()
    h, w = infos[0][2]
    shape = (h + int(oy.max()), w + int(ox.max()))
    sources = [combine.FileSource(p, idx, s, int(dx), int(dy), zero=float(z), scale=float(sc), out_shape=shape)
               for (p, idx, s), dx, dy, sc, z in zip(infos, ox, oy, scales, zeros)]
    try:
        limit = parse_size(args.memory_limit)
    except ValueError as exc:
        raise InputError(f"--memory-limit: {exc}") from None
    gain = rdnoise = 1.0
    if args.method == "ccdclip":
        from tui_stack.pipeline import header_number

        gain = header_number(_number_or_keyword(args.gain), paths[0], infos[0][1])
        rdnoise = header_number(_number_or_keyword(args.rdnoise), paths[0], infos[0][1])
    params = combine.CombineParams(args.method, args.nlow, args.nhigh, args.sigma, args.maxiters, args.lsigma,
                                   args.hsigma, args.pclip, gain, rdnoise, args.snoise)
    result = combine.combine(sources, params, memory_limit=limit, maps=args.maps)
    hdr = fits.Header()
    hdr["TSVERS"] = (__version__, "tui-stack version")
    hdr["TSMETHOD"] = (args.method, "combine method")
    hdr["NCOMBINE"] = (n, "frames combined")
    for k, (p, dx, dy, sc, z) in enumerate(zip(paths, ox, oy, scales, zeros), 1):
        hdr[f"IMCMB{k:03d}"] = p.name
        hdr.add_history(f"{p.name} offset=({dx},{dy}) zero={z:g} scale={sc:g}")
    io.write_fits_atomic(out, fits.HDUList([fits.PrimaryHDU(result.data, hdr)] + io.map_hdus(result)))
    console.print(f"{args.method} of {n} frames -> {out}")
    return out
