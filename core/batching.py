"""Two ways to feed an engine's forward pass with more than one image at a time.

- :func:`run_batch`: a known list of images (CLI, dashboard Batch): decoding and post-processing run in a thread
  pool ahead of / behind the batched forward passes (at most :func:`in_flight_bound` images held decoded), so that
  the forward pass is the bottleneck; ``workers=0`` runs the stages one after the other (for comparisons).
- :class:`MicroBatcher`: single requests arriving concurrently (the API on a GPU): callers prepare their image in
  their own thread, one batching thread runs the forward pass on whatever has queued up within a short window.

Both use only the engine's three public stages: ``prepare`` (validate → resolve → decode → geometry),
``forward`` (one forward pass, serialised per model) and ``finish`` (inverse geometry → mask file → measurements).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from core.errors import error_body

Prepared = Any  # a decoded, preprocessed image (core.engine.Prepared); the stages below pass it on untouched


class Engine(Protocol):
    """The three stages an engine runs an image through (:class:`core.engine.Engine`); this module needs no more, so
    it does not import the engine (which imports it)."""

    def prepare(self, request: Any, *, input_dir: Path | None = None) -> Prepared: ...

    def forward(self, batch: list[Prepared]) -> tuple[list[Any], float, Any]: ...

    def finish(self, prepared: Prepared, raw: Any, *, output_dir: Path, forward_sec: float, gpu: Any) -> dict: ...

Progress = Any  # an object with update(n) (tqdm) or a callable (done, total)
OnResult = Callable[[int, "dict | None", "BaseException | None"], None]


def report_progress(progress: Progress, done: int, total: int) -> None:
    """Tell ``progress`` that ``done`` of ``total`` images are finished."""
    if progress is None:
        return
    if hasattr(progress, "update"):
        progress.update(1)
    else:
        progress(done, total)


def in_flight_bound(batch_size: int, workers: int) -> int:
    """The most prepared (decoded) images :func:`run_batch` holds at once: with threads, two batches decoding
    ahead, one in the forward pass and one being finished (``4 × batch_size``); without (``workers`` < 1), one
    batch (``batch_size``)."""
    return max(1, int(batch_size)) * (4 if workers >= 1 else 1)


class _BatchRun:
    """State of one overlapped :func:`run_batch` call: images decode in the pool ahead of the forward pass (at most
    two batches), the previous batch is finished (mask written) in the pool while the next one runs forward."""

    def __init__(self, engine: Engine, items: list, pool: ThreadPoolExecutor, *, output_dir: Path, batch_size: int,
                 input_dir: Path | None, on_result: OnResult):
        self.engine, self.items, self.pool = engine, items, pool
        self.output_dir, self.batch_size, self.input_dir = output_dir, batch_size, input_dir
        self.on_result = on_result
        self.pending: deque[tuple[int, Future]] = deque()  # (index, future of Prepared)
        self.finishing: deque[tuple[int, Future]] = deque()  # (index, future of response)
        self.next_index = 0

    def top_up(self) -> None:
        """Keep up to two batches of images decoding ahead of the forward pass."""
        while self.next_index < len(self.items) and len(self.pending) < 2 * self.batch_size:
            item = self.items[self.next_index]
            self.pending.append((self.next_index, self.pool.submit(self.engine.prepare, item,
                                                                   input_dir=self.input_dir)))
            self.next_index += 1

    def drain(self, block: bool) -> None:
        """Hand finished responses (or their errors) on, in submission order; ``block``: all of them."""
        while self.finishing and (block or self.finishing[0][1].done()):
            index, future = self.finishing.popleft()
            try:
                result = future.result()
            except Exception as exc:  # noqa: BLE001 - reported per image
                self.on_result(index, None, exc)
            else:
                self.on_result(index, result, None)

    def forward(self, batch: list[tuple[int, Prepared]]) -> None:
        """One forward pass over ``batch``; its post-processing goes to the pool once the previous batch's is done
        (so at most one batch is being finished)."""
        outputs = _forward_or_report(self.engine, batch, self.on_result)
        self.drain(block=True)
        if outputs is None:
            return
        raws, share, gpu = outputs
        for (index, prep), raw in zip(batch, raws, strict=True):
            self.finishing.append((index, self.pool.submit(self.engine.finish, prep, raw, output_dir=self.output_dir,
                                                           forward_sec=share, gpu=gpu)))

    def run(self) -> None:
        self.top_up()
        batch: list[tuple[int, Prepared]] = []
        while self.pending:
            index, future = self.pending.popleft()
            self.top_up()
            try:
                batch.append((index, future.result()))
            except Exception as exc:  # noqa: BLE001 - reported per image
                self.on_result(index, None, exc)
            if batch and (len(batch) >= self.batch_size or not self.pending):
                self.forward(batch)
                batch = []
            self.drain(block=False)
        self.drain(block=True)


def _forward_or_report(engine: Engine, batch: list[tuple[int, Prepared]],
                       on_result: OnResult) -> tuple[list[Any], float, Any] | None:
    """``(outputs, forward seconds per image, gpu)`` of one forward pass, or None after reporting its error for
    every image of ``batch``."""
    try:
        outputs, forward_sec, gpu = engine.forward([p for _, p in batch])
    except Exception as exc:  # noqa: BLE001 - every image of the batch gets the error
        for index, _ in batch:
            on_result(index, None, exc)
        return None
    return outputs, forward_sec / len(batch), gpu


def _run_serial(engine: Engine, items: list, *, output_dir: Path, batch_size: int, input_dir: Path | None,
                on_result: OnResult) -> None:
    """The same stages one after the other in this thread, a batch at a time (no overlap; for comparison)."""
    for first in range(0, len(items), batch_size):
        batch: list[tuple[int, Prepared]] = []
        for index in range(first, min(first + batch_size, len(items))):
            try:
                batch.append((index, engine.prepare(items[index], input_dir=input_dir)))
            except Exception as exc:  # noqa: BLE001 - reported per image
                on_result(index, None, exc)
        outputs = _forward_or_report(engine, batch, on_result) if batch else None
        if outputs is None:
            continue
        raws, share, gpu = outputs
        for (index, prep), raw in zip(batch, raws, strict=True):
            try:
                result = engine.finish(prep, raw, output_dir=output_dir, forward_sec=share, gpu=gpu)
            except Exception as exc:  # noqa: BLE001 - reported per image
                on_result(index, None, exc)
            else:
                on_result(index, result, None)


def error_record(request: Any, exc: BaseException) -> dict:
    """The per-image entry of a batch result when that image failed (the one error form, message as ``error``)."""
    rel = request.get("img_path_relative") if isinstance(request, dict) else getattr(request, "img_path_relative", None)
    body = error_body(exc)
    record = {"img_path_relative": rel, "error": body.pop("detail"), **body}
    if isinstance(exc, Exception) and not hasattr(exc, "message"):
        record["error"] = f"{type(exc).__name__}: {exc}"
    return record


def predict_all(engine: Engine, requests: Iterable[Any], *, output_dir: Path, batch_size: int = 8,
                progress: Progress = None, input_dir: Path | None = None, workers: int = 2,
                on_error: str = "record") -> list[dict]:
    """Every request's response, in order (:func:`run_batch`); ``progress``: an object with ``update(n)`` (tqdm)
    or a callable ``(done, total)``; ``on_error="record"`` puts an :func:`error_record` in a failed image's place,
    ``"raise"`` stops at the first failure."""
    items = list(requests)
    results: list[dict] = [{} for _ in items]
    done = 0

    def on_result(index: int, response: dict | None, exc: BaseException | None) -> None:
        nonlocal done
        if exc is not None:
            if on_error == "raise":
                raise exc
            response = error_record(items[index], exc)
        results[index] = response or {}
        done += 1
        report_progress(progress, done, len(items))

    run_batch(engine, items, output_dir=output_dir, on_result=on_result, batch_size=batch_size,
              input_dir=input_dir, workers=workers)
    return results


def run_batch(engine: Engine, items: Iterable[Any], *, output_dir: Path, on_result: OnResult, batch_size: int = 8,
              input_dir: Path | None = None, workers: int = 2) -> None:
    """Analyse ``items`` (request dicts or parsed requests) and call ``on_result(index, response, error)`` once per
    item, in completion order; exactly one of ``response`` / ``error`` is set.

    ``workers`` ≥ 1: decoding and finishing run in that many threads beside the forward passes; ``workers`` < 1:
    everything in this thread, one stage after the other. At most :func:`in_flight_bound` images are held decoded.
    """
    listed, size = list(items), max(1, int(batch_size))
    if workers < 1:
        _run_serial(engine, listed, output_dir=Path(output_dir), batch_size=size, input_dir=input_dir,
                    on_result=on_result)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="uusic-prep") as pool:
        _BatchRun(engine, listed, pool, output_dir=Path(output_dir), batch_size=size, input_dir=input_dir,
                  on_result=on_result).run()


class MicroBatcher:
    """Groups concurrent single-image predictions into one forward pass (worth it on a GPU).

    Results equal unbatched ones; the GPU memory fields describe the shared forward pass. ``batches`` and ``items``
    count the forward passes run and the images they carried.
    """

    def __init__(self, engine: Engine, *, max_batch: int = 8, window_s: float = 0.004):
        self.engine, self.max_batch, self.window_s = engine, max(1, int(max_batch)), max(0.0, float(window_s))
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="uusic-micro-batcher", daemon=True)
        self._thread.start()
        self.batches = 0
        self.items = 0

    def forward_one(self, prepared: Prepared) -> tuple[Any, float, Any]:
        """The forward output of one prepared image, computed together with whatever else is queued."""
        future: Future = Future()
        self._queue.put((prepared, future))
        return future.result()

    def _collect(self) -> list[tuple[Prepared, Future]]:
        batch = [self._queue.get()]
        deadline = time.perf_counter() + self.window_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.perf_counter()
            try:
                batch.append(self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._collect()
            try:
                outputs, seconds, gpu = self.engine.forward([prepared for prepared, _ in batch])
            except BaseException as exc:  # noqa: BLE001 - handed to every waiting caller
                for _, future in batch:
                    future.set_exception(exc)
                continue
            self.batches += 1
            self.items += len(batch)
            for (_, future), raw in zip(batch, outputs, strict=True):
                future.set_result((raw, seconds, gpu))
