"""`tui-stack combine`: frames already aligned, combined as imcombine / ccdproc.combine would."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tui_stack import __version__, safetext
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
        return exposure_times([(p, idx) for p, idx, _ in infos], args.exposure_key)
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
    if not np.all(np.isfinite(w) & (w > 0)):
        raise InputError(f"{choice}: weights must be positive finite numbers")
    return w / w.max()  # only their ratios count; 1e308 x n would overflow the sum


def checked_flags(args) -> dict:
    """Every [combine] flag through the check the config uses for the same key."""
    from tui_stack.config import parse_value
    from tui_stack.core.combine_params import PARAMS, WEIGHTS

    values = {}
    for p in PARAMS:
        if not hasattr(args, p.name):
            continue
        raw = getattr(args, p.name)
        if p.name == "weights" and raw not in WEIGHTS:
            values[p.name] = str(raw)  # a file of weights, read and checked with the frames
            continue
        try:
            values[p.name] = p.validate(p.flag, parse_value(raw))
        except ValueError as exc:
            raise InputError(str(exc)) from None
    return values


def combine_files(args, console) -> Path:
    from tui_stack.core import combine, io
    from tui_stack.core.combine_params import PARAMS

    flags = checked_flags(args)
    for key, value in flags.items():
        setattr(args, key, value)
    from tui_stack import limits, rundir

    paths = [Path(p) for p in args.files]
    resolved = set()
    for p in paths:
        real = io.resolved(p)
        if real in resolved:
            raise InputError(f"{p}: the same file is given twice")
        resolved.add(real)
    out = Path(args.out)
    if out.is_dir() or str(args.out).endswith("/"):
        raise InputError(f"--out {out}: is a directory; give the output file's name, "
                         f"e.g. {out / f'combined_{args.method}.fits'}")
    if io.resolved(out) in resolved:
        raise InputError(f"{out}: output would overwrite an input file")
    if out.exists() and not args.overwrite:
        raise InputError(f"{out}: exists; pass --overwrite to replace it")
    infos = []
    for p in paths:
        hdul = io.open_fits(p)
        try:
            idx = io._image_hdu_index(hdul, p)
            io.check_data(hdul, idx, p)  # before any block is combined: a broken file named at once
            shape = io.image_shape(hdul[idx])
        finally:
            hdul.close()
        infos.append((p, idx, shape))
    io.check_shapes([(p, s) for p, _, s in infos])
    n = len(paths)
    if args.scale and args.scale_keyword:
        raise InputError("give --scale or --scale-keyword, not both")
    scales = _read_column_file(args.scale, n, 1, "scale")[:, 0] if args.scale else np.ones(n)
    if args.scale and not np.all(np.isfinite(scales) & (scales > 0)):
        raise InputError(f"{args.scale}: scales must be positive finite numbers")
    if args.scale_keyword:
        scales = _keyword_scales(infos, args.scale_keyword.upper())
    zeros = _read_column_file(args.zero, n, 1, "zero")[:, 0] if args.zero else np.zeros(n)
    if not np.all(np.isfinite(zeros)):
        raise InputError(f"{args.zero}: zeros must be finite numbers")
    offsets = _read_column_file(args.offsets, n, 2, "offsets") if args.offsets else np.zeros((n, 2))
    if not np.all(np.isfinite(offsets) & (offsets == np.round(offsets))):
        raise InputError(f"{args.offsets}: offsets must be whole numbers of pixels")
    offsets = offsets.astype(int)
    # IRAF style: the output grows to hold every frame at its offset.
    shape = limits.check_offsets(offsets, infos[0][2])
    ox, oy = offsets[:, 0] - offsets[:, 0].min(), offsets[:, 1] - offsets[:, 1].min()
    sources = [combine.FileSource(p, idx, s, int(dx), int(dy), zero=float(z), scale=float(sc), out_shape=shape)
               for (p, idx, s), dx, dy, sc, z in zip(infos, ox, oy, scales, zeros)]
    values = {p.name: flags[p.name] for p in PARAMS if p.method_param and p.name in flags}
    values.update(method=args.method, gain=1.0, rdnoise=1.0)
    if args.method == "ccdclip":
        from tui_stack.pipeline import header_number

        values["gain"] = header_number(flags["gain"], paths[0], infos[0][1], "--gain")
        values["rdnoise"] = header_number(flags["rdnoise"], paths[0], infos[0][1], "--rdnoise")
    params = combine.CombineParams(**values)
    try:
        params.check_frames(n, flags=True)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    weights = _weights(args, infos, scales)
    limits.check_combine_memory(n, shape[1], args.method, args.memory_limit, weights is not None)
    limits.check_disk(out.parent, limits.image_bytes(shape, args.maps), f"{out.name} ({shape[1]}x{shape[0]} px)")
    from tui_stack import compute

    scheduler = args.scheduler or ("dask" if args.address else "local")
    workers = None
    if args.workers is not None:
        from tui_stack.config import parse_value
        from tui_stack.core.combine_params import integer

        workers = parse_value(args.workers)
        try:

            integer(1)(workers)
        except ValueError as exc:
            raise InputError(f"--workers {exc}, got {args.workers!r}") from None
    from tui_stack.pipeline.shift import frame_header

    # as imcombine: the first frame's header (its descriptive keywords and WCS, moved with its offset)
    hdr = frame_header(paths[0], infos[0][1], (int(ox[0]), int(oy[0])))
    hdr.extend(_provenance(args, params, paths, ox, oy, scales, zeros, weights), unique=True)
    # the image goes to disk block by block as it is combined (never whole in memory), into a
    # staging folder beside OUT, renamed over it at the end (tui_stack.rundir.OutputFile)
    new_folder = not out.parent.exists()  # made for OUT, as run makes its output folder: say so (a typo shows)
    with rundir.OutputFile(out) as target:
        engine = compute.open_compute(scheduler, args.address, workers)
        with io.FitsStream(target.path, hdr, shape) as stream:
            try:
                result = engine.combine(sources, params, memory_limit=args.memory_limit, maps=args.maps, weights=weights,
                                        sink=lambda y0, block: stream.write(block[0]))
            except ValueError as exc:
                raise InputError(str(exc)) from None
            finally:
                engine.close()
            stream.finish(io.map_hdus(result))
        target.commit()
    console.print(f"{args.method} of {n} frames -> {safetext.markup(out)}"
                  + (f" (made the folder {safetext.markup(out.parent)})" if new_folder else ""))
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
        hdr[f"IMCMB{k:03d}"] = safetext.header(p.name)
        hdr.add_history(f"{safetext.header(p.name)} offset=({dx},{dy}) zero={z:g} scale={sc:g}"
                        + (f" weight={wt:.5f}" if wt is not None else ""))
    return hdr
