"""Three stages of one job run at the same time: a producer thread, the calling thread, a consumer thread.

``LipSyncPipeline`` (``lipsync generate``, the server's replicas) runs its job as::

    producer thread:  chunks = source()                decode, track + align faces, crops, audio tokens
    calling thread:   done = middle(chunk)             VAE encode, UNet, VAE decode
    consumer thread:  sink(done)                       cross-fade, paste back, encode

so the denoiser never waits on the CPU work around it (unless that work is the slower side). The
queues between the threads are bounded (``depth`` chunks each), so memory stays bounded by a few
chunks in flight, independent of the video's length.

Order and errors are those of the sequential loop ``for chunk in source(): sink(middle(chunk))``:

* every stage sees its chunks in order, in one thread, so each stage computes exactly what the
  loop computes (the output is bit-for-bit the same);
* an error is raised in the calling thread as the same exception object, traceback included. A
  producer error travels in order through the first queue: the chunks before it are denoised and
  written first, as in the loop. A middle error lets the consumer finish the chunks before it. A
  consumer error stops everything at once (it is the earliest in the stream). So the error raised
  is the one the loop would raise first. A ``BaseException`` that is not an ``Exception``
  (KeyboardInterrupt, a cancellation) stops every thread at once.
* nothing hangs: a blocked put or get gives up when the run is stopped, and the threads are joined
  before :func:`run_overlapped` returns or raises (the producer finishes its current item first).

``waits`` says how long the calling thread sat idle: waiting for the producer (``input``) and for
the consumer (``output``, a full queue).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

# Polling period of a blocked put/get while it checks whether the run was stopped. A put or get
# that can proceed returns at once (the queue's condition wakes it), so this adds no latency.
_POLL_S = 0.05


class _Stopped(Exception):
    """Raised in a thread whose put/get gave up because the run was stopped."""


class _Failed:
    """A producer error, in order in the first queue."""

    def __init__(self, error: BaseException):
        self.error = error


_END = object()


class Channel:
    """A bounded queue between two threads; a blocked put or get gives up once ``stop`` is set."""

    def __init__(self, size: int, stop: threading.Event):
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, int(size)))
        self.stop = stop

    def put(self, item: Any) -> None:
        while True:
            if self.stop.is_set():
                raise _Stopped()
            try:
                self.queue.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                pass

    def get(self) -> Any:
        while True:
            try:
                return self.queue.get(timeout=_POLL_S)
            except queue.Empty:
                if self.stop.is_set():
                    raise _Stopped() from None


def run_overlapped(source: Callable[[], Iterable[Any]], middle: Callable[[Any], Any],
                   sink: Callable[[Any], None], *, depth: int = 2, name: str = "stage",
                   source_thread: bool = True, sink_thread: bool = True) -> dict[str, float]:
    """``for chunk in source(): sink(middle(chunk))`` with ``source`` iterated in a producer thread,
    ``middle`` in the calling thread and ``sink`` in a consumer thread (see the module doc).

    ``depth``: chunks each queue holds. ``source_thread`` / ``sink_thread`` False: that stage runs
    in the calling thread instead (both False: the plain loop). Returns the calling thread's idle
    seconds: ``{"input": waiting for the producer, "output": waiting for room towards the consumer}``.
    """
    if not source_thread and not sink_thread:
        for item in source():
            sink(middle(item))
        return {"input": 0.0, "output": 0.0}
    stop = threading.Event()
    to_middle, to_sink = Channel(depth, stop), Channel(depth, stop)
    sink_error: list[BaseException] = []
    waits = {"input": 0.0, "output": 0.0}

    def produce() -> None:
        items = None
        try:
            items = iter(source())
            for item in items:
                to_middle.put(item)
            to_middle.put(_END)
        except _Stopped:
            pass
        except BaseException as err:  # delivered in order; the calling thread raises it
            try:
                to_middle.put(_Failed(err))
            except _Stopped:
                pass
        finally:
            close = getattr(items, "close", None)
            if close is not None:  # a generator: its finally blocks (open files) run in this thread
                try:
                    close()
                except BaseException:
                    pass

    def consume() -> None:
        try:
            while True:
                item = to_sink.get()
                if item is _END:
                    return
                sink(item)
        except _Stopped:
            pass
        except BaseException as err:
            sink_error.append(err)
            stop.set()

    def inline() -> Iterator[Any]:  # the source in this thread: its errors are raised here, in order
        yield from source()
        yield _END

    producer = threading.Thread(target=produce, name=f"{name}-producer", daemon=True)
    consumer = threading.Thread(target=consume, name=f"{name}-consumer", daemon=True)
    threads = [t for t, on in ((producer, source_thread), (consumer, sink_thread)) if on]
    for t in threads:
        t.start()
    items = None if source_thread else inline()
    error: BaseException | None = None
    try:
        try:
            while True:
                t = time.perf_counter()
                item = to_middle.get() if items is None else next(items)
                waits["input"] += time.perf_counter() - t
                if item is _END:
                    break
                if isinstance(item, _Failed):
                    raise item.error
                done = middle(item)
                if not sink_thread:
                    sink(done)
                    continue
                t = time.perf_counter()
                to_sink.put(done)
                waits["output"] += time.perf_counter() - t
            if sink_thread:
                to_sink.put(_END)
                consumer.join()
        except _Stopped:
            pass  # the consumer failed: its error is raised below
        except Exception as err:
            # The consumer still writes what came before this error; an error of its own is earlier
            # in the stream, and wins.
            error = err
            if sink_thread:
                try:
                    to_sink.put(_END)
                    consumer.join()
                except _Stopped:
                    pass
        except BaseException as err:  # KeyboardInterrupt, a cancellation: stop at once
            error = err
    finally:
        stop.set()
        if items is not None:
            items.close()
        for t in threads:
            t.join()
    if sink_error:
        error = sink_error[0]
    if error is not None:
        raise error
    return waits
