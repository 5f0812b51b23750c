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
    from tui_stack.pipeline import exposure_times

    values = exposure_times([(p, idx) for p, idx, _ in infos], key)
    return values[0] / values


def _weights(args, infos, scales) -> np.ndarray | None:
    """IRAF's weight choices: exposure time, inverse noise variance of the scaled frame, a file."""
    from tui_stack.core import background, io
    from tui_stack.pipeline import exposure_times

    choice = args.weights
    if choice == "none":
        return None
    if args.method == "median":
        raise InputError("--weights apply to the averaging methods, not to median")
    if choice == "exposure":
        return exposure_times([(p, idx) for p, idx, _ in infos], args.exposure_keyword.upper())
    if choice == "noise":
        noise = []
        for p, idx, _ in infos:
            frame = io.read_frame(p)
            noise.append(background.estimate_sky(frame.data, frame.mask).noise)
        noise = np.array(noise) * scales
        if not np.all(np.isfinite(noise) & (noise > 0)):
            raise InputError("--weights noise: a frame has no measurable sky noise")
        return 1.0 / noise**2
    w = _read_column_file(Path(choice), len(infos), 1, "weights")[:, 0]
    if not np.all(w > 0):
        raise InputError(f"{choice}: weights must be positive")
    return w


def _number_or_keyword(text: str):
    try:
        return float(text)
    except ValueError:
        return text.upper()


def combine_files(args, console) -> Path:
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
    if not (0 < args.gesd_outliers < 1 and 0 < args.gesd_alpha < 1):
        raise InputError("--gesd-outliers and --gesd-alpha must be between 0 and 1")
    params = combine.CombineParams(args.method, args.nlow, args.nhigh, args.sigma, args.maxiters, args.lsigma,
                                   args.hsigma, args.pclip, gain, rdnoise, args.snoise, nkeep=args.nkeep,
                                   mclip=args.mclip, gesd_outliers=args.gesd_outliers, gesd_alpha=args.gesd_alpha)
    weights = _weights(args, infos, scales)
    from tui_stack import compute

    scheduler = args.scheduler or ("dask" if args.address else "local")
    hdr = _provenance(args, params, paths, ox, oy, scales, zeros, weights)
    engine = compute.open_compute(scheduler, args.address, args.workers)
    # the image goes to disk block by block as it is combined: never whole in memory
    with io.FitsStream(out, hdr, shape) as stream:
        try:
            result = engine.combine(sources, params, memory_limit=limit, maps=args.maps, weights=weights,
                                    sink=lambda y0, block: stream.write(block[0]))
        except ValueError as exc:
            raise InputError(str(exc)) from None
        finally:
            engine.close()
        stream.finish(io.map_hdus(result))
    console.print(f"{args.method} of {n} frames -> {out}")
    return out


def _provenance(args, params, paths, ox, oy, scales, zeros, weights):
    from astropy.io import fits

    from tui_stack.core import combine

    n = len(paths)
    hdr = fits.Header()
    hdr["TSVERS"] = (__version__, "tui-stack version")
    for key, _, value, comment in combine.method_parameters(params):
        hdr[key] = (value, comment)
    hdr["NCOMBINE"] = (n, "frames combined")
    hdr["TSWEIGHT"] = (args.weights if weights is not None else "none", "weights of the average")
    wnorm = weights / weights.sum() if weights is not None else [None] * n
    for k, (p, dx, dy, sc, z, wt) in enumerate(zip(paths, ox, oy, scales, zeros, wnorm), 1):
        hdr[f"IMCMB{k:03d}"] = p.name
        hdr.add_history(f"{p.name} offset=({dx},{dy}) zero={z:g} scale={sc:g}"
                        + (f" weight={wt:.5f}" if wt is not None else ""))
    return hdr
