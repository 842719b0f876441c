"""Dynamic micro-batching for an asyncio server: requests arriving together are scored as one batch.

Each request's rows go into a bounded :class:`asyncio.Queue` with a future; one task per process
takes the first waiting request and everything else already queued and, when requests overlap
(this batch or the last one held several), waits ``window_s`` and takes what arrived meanwhile
(until ``max_batch_rows``), and hands the batch to ``score`` on one worker
thread (torch releases the GIL, so the event loop keeps accepting and encoding requests meanwhile).
While a batch is scored, new requests queue up and form the next batch, so under load batches grow
by themselves, and a lone request on an idle server does not wait at all. A full queue refuses at once
(:class:`QueueFull`, the server's 503) instead of letting latency grow without bound.

Example::

    >>> import asyncio
    >>> async def demo():
    ...     batcher = MicroBatcher(lambda items: [[2 * x for x in item] for item in items], window_s=0.001)
    ...     await batcher.start()
    ...     results = await asyncio.gather(batcher.submit([1, 2], 2), batcher.submit([3], 1))
    ...     await batcher.stop()
    ...     return results, batcher.batches
    >>> asyncio.run(demo())
    ([[2, 4], [6]], 1)
"""

import asyncio
import concurrent.futures
from typing import Any, Callable, List, Optional, Sequence, Tuple


class QueueFull(RuntimeError):
    """The batcher's queue holds ``max_queue`` requests already."""


class MicroBatcher:
    """Collects submitted items into batches for ``score`` (a list of items -> a list of results).

    Args:
        score: runs on the batcher's one worker thread; gets the batch's items in arrival order and
            returns one result per item.
        max_batch_rows: a batch stops growing once it holds this many rows (a bigger request is a
            batch of its own).
        window_s: how long a batch waits for more requests after its first one.
        max_queue: requests waiting at most; more are refused with :class:`QueueFull`.
    """

    def __init__(
        self,
        score: Callable[[List[Any]], Sequence[Any]],
        max_batch_rows: int = 4096,
        window_s: float = 0.002,
        max_queue: int = 256,
    ) -> None:
        if max_batch_rows < 1 or max_queue < 1 or window_s < 0:
            raise ValueError("max_batch_rows and max_queue must be >= 1 and window_s >= 0")
        self.score = score
        self.max_batch_rows = max_batch_rows
        self.window_s = window_s
        self.max_queue = max_queue
        self.batches = 0  # batches scored, for /health and tests
        self.rows = 0
        self._queue: Optional[asyncio.Queue] = None
        self._task: Optional[asyncio.Task] = None
        self._pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._overlap = False  # the last batch held several requests

    @property
    def waiting(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="iarm-score")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="iarm-batcher")

    async def stop(self) -> None:
        """Score what is queued, then stop (graceful shutdown)."""
        if self._queue is not None and self._task is not None:
            await self._queue.join()
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._task = self._pool = None

    async def submit(self, item: Any, rows: int) -> Any:
        """Queue ``item`` (``rows`` rows) and wait for its result; raises :class:`QueueFull`."""
        if self._queue is None or self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running")
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((item, rows, future))
        except asyncio.QueueFull:
            raise QueueFull(f"{self.max_queue} requests are waiting already") from None
        return await future

    def _drain(self, batch: List[Tuple[Any, int, asyncio.Future]], rows: int) -> int:
        """Move queued requests into ``batch`` until it holds ``max_batch_rows``; returns its rows."""
        assert self._queue is not None
        while rows < self.max_batch_rows and not self._queue.empty():
            entry = self._queue.get_nowait()
            batch.append(entry)
            rows += entry[1]
        return rows

    async def _run(self) -> None:
        assert self._queue is not None
        queue = self._queue
        loop = asyncio.get_running_loop()
        while True:
            batch: List[Tuple[Any, int, asyncio.Future]] = [await queue.get()]
            rows = batch[0][1]
            rows = self._drain(batch, rows)
            # the window, once requests overlap (this batch or the last held several): requests
            # arriving meanwhile join; a lone request on an idle server is scored at once
            if rows < self.max_batch_rows and self.window_s > 0 and (len(batch) > 1 or self._overlap):
                await asyncio.sleep(self.window_s)
                rows = self._drain(batch, rows)
            self._overlap = len(batch) > 1
            live = [entry for entry in batch if not entry[2].done()]  # a cancelled request is skipped
            try:
                if live:
                    results = await loop.run_in_executor(self._pool, self.score, [entry[0] for entry in live])
                    for (_, _, future), result in zip(live, results):
                        if not future.done():
                            future.set_result(result)
                    self.batches += 1
                    self.rows += rows
            except Exception as error:  # the batch fails, the batcher lives on
                for _, _, future in live:
                    if not future.done():
                        future.set_exception(error)
            finally:
                for _ in batch:
                    queue.task_done()
