"""Where the work runs: this machine's threads (the default) or a Dask cluster.

Both engines run the same units of work - one frame's measurement, one block of rows of the
combine (core.combine.combine_rows) - so the numbers are the same whichever runs them. The
pipeline asks `current()` for the engine; `using(...)` sets it for a run.
"""

from __future__ import annotations

import os
from collections import deque
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

from tui_stack.errors import InputError

FRAME_THREADS = 2  # frames measured at once locally: numpy releases the GIL, 2 cores here

Progress = Callable[[str, int, int], None]


def _noop(stage, done, total):
    pass


class LocalCompute:
    """This machine: a few threads, at most that many frames or blocks in memory at once."""

    name = "local"
    dashboard = None

    def map_in_order(self, fn, items: Iterable, progress: Progress = _noop, stage: str = "",
                     threads: int = FRAME_THREADS) -> Iterator:
        """fn(item) for every item, yielded in order; an error (or a cancel raised by
        `progress`) stops the rest."""
        from concurrent.futures import ThreadPoolExecutor

        items = list(items)
        with ThreadPoolExecutor(max(1, threads)) as ex:
            yield from _ordered(ex.submit, lambda f: f.result(), fn, items, threads, progress, stage)

    def combine(self, sources, params, **kw):
        from tui_stack.core import combine

        return combine.combine(sources, params, **kw)

    def close(self) -> None:
        pass


def _ordered(submit, result, fn, items, window, progress, stage):
    """Submit fn(item) keeping at most `window` in flight; yield results in order."""
    inflight: deque = deque()
    done = 0
    try:
        for item in items:
            inflight.append(submit(fn, item))
            if len(inflight) >= window:
                yield result(inflight.popleft())
                done += 1
                progress(stage, done, len(items))
        while inflight:
            yield result(inflight.popleft())
            done += 1
            progress(stage, done, len(items))
    except BaseException:
        for f in inflight:
            f.cancel()
        raise


def _call(fn, item):
    return fn(item)


class DaskCompute:
    """A Dask cluster: the scheduler at `address`, or a LocalCluster of `workers` processes.

    Frames are read by the workers from their paths (shared storage, as on a survey's
    cluster); what each task needs besides (the reference frame, the settings) is sent to
    every worker once. The combine is one task per block of rows, at most two per worker in
    flight, each written into the output as it arrives; a worker lost mid-way has its tasks
    run again elsewhere (Dask's own retry), so the result does not change.
    """

    name = "dask"

    def __init__(self, address: str | None = None, workers: int | None = None):
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise InputError("scheduler = \"dask\" needs Dask: pip install 'tui-stack[dask]'") from None
        self.cluster = None
        try:
            if address:
                self.client = Client(address, timeout="10s")
            else:
                self.cluster = LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1,
                                            processes=True, dashboard_address=":0")
                self.client = Client(self.cluster)
        except (OSError, TimeoutError) as exc:
            raise InputError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
        except ValueError as exc:  # an address Dask cannot parse ('notaurl:::')
            raise InputError(f"--address {address!r}: not a Dask scheduler address ({exc})") from None
        self.dashboard = self.client.dashboard_link

    @property
    def parallel(self) -> int:
        return max(1, sum(self.client.nthreads().values()))

    def map_in_order(self, fn, items: Iterable, progress: Progress = _noop, stage: str = "",
                     threads: int | None = None) -> Iterator:
        items = list(items)
        if not items:
            return
        shared = self.client.scatter(fn, broadcast=True, hash=False)

        def submit(_, item):
            return self.client.submit(_call, shared, item, pure=False)

        yield from _ordered(submit, lambda f: f.result(), None, items, 2 * self.parallel, progress, stage)

    def combine(self, sources, params, memory_limit, progress=None, block_rows=None, maps=True, weights=None,
                threads: int = 1, sink=None):
        """As core.combine.combine, each block of rows a task; memory_limit bounds each task."""
        from tui_stack.core import combine

        if not sources:
            raise ValueError("nothing to combine")
        h, w = sources[0].shape
        n = len(sources)
        weights = combine.check_weights(weights, n, params.method)
        rows, cols = combine.block_shape(sources, params.method, memory_limit, 1, weights is not None)
        rows = block_rows or rows
        out = combine.CombineResult.empty((h, w), maps, keep_data=sink is None)
        shared = [self.client.scatter(list(sources), broadcast=True, hash=False)]
        starts = list(range(0, h, rows))
        block_of = {}

        def submit(_, y0):
            f = self.client.submit(combine.combine_rows, shared[0], params, y0, min(h, y0 + rows), maps, weights,
                                   cols, pure=False)
            block_of[f.key] = (y0, shared[0])
            return f

        def result(f):
            from concurrent.futures import CancelledError

            try:
                return f.result()
            except CancelledError:
                # a worker killed as its copy of the sources was the only one the scheduler knew
                # of: the scattered sources are forgotten with it, and their tasks; send them again
                y0, was = block_of[f.key]
                if was is shared[0]:
                    shared[0] = self.client.scatter(list(sources), broadcast=True, hash=False)
                return submit(None, y0).result()

        def report(stage, done, total):
            if progress is not None:
                progress(min(h, done * rows), h)

        for y0, block in zip(starts, _ordered(submit, result, None, starts, 2 * self.parallel,
                                              report, "combine")):
            if sink is not None:
                sink(y0, block)
            out.put(y0, block)
        return out

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


_current = LocalCompute()


def current():
    return _current


def open_compute(scheduler: str = "local", address: str | None = None, workers: int | None = None):
    if scheduler == "local":
        return LocalCompute()
    if scheduler == "dask":
        return DaskCompute(address, workers)
    raise InputError(f"unknown scheduler {scheduler!r}; use local or dask")


@contextmanager
def using(engine):
    """Run the pipeline's work on `engine` inside the block."""
    global _current
    before, _current = _current, engine
    try:
        yield engine
    finally:
        _current = before
