"""Run the device pipeline's per-batch work ahead of the training step, on a thread of its own.

`RunAhead(source, produce, depth=k, device=...)` iterates produce(batch) for the batches of
`source`, computed on a background thread at most k batches ahead of the consumer. On CUDA the
thread works on a stream of its own and hands each result over with an event: the consumer's stream
waits for the event (a wait queued on the GPU, not a host synchronisation) and record_stream keeps
the result's memory from being reused before the consumer's kernels have read it. So whatever the
produce step blocks on (torchvision's nvJPEG decoder synchronises the host with its stream before
and after every batch; the next host batch not being ready yet) blocks that thread only, and the
training thread waits only when the data path as a whole is slower than the step.

The batches are the same, in the same order, as produce(batch) for batch in source: one thread
produces them one at a time, and produce draws no random numbers.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import torch

DEPTH = 2  # batches computed ahead of the one the step is using


class RunAhead:
    """Iterator over produce(b) for b in source, computed on a thread up to `depth` batches ahead.

    `waited` is the time the consumer spent blocked for a batch, and `produced` how many batches
    the thread has finished (both read by tests and benches)."""

    def __init__(self, source: Iterable, produce: Callable, *, depth: int = DEPTH, device=None):
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.cuda = self.device.type == "cuda"
        self.source, self.produce = iter(source), produce
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.waited, self.produced = 0.0, 0
        self.thread = threading.Thread(target=self._run, name="alexnet-data-ahead", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            if self.cuda:
                with torch.cuda.device(self.device):
                    stream = torch.cuda.Stream(self.device)
                    with torch.cuda.stream(stream):
                        self._loop(stream)
            else:
                self._loop(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(("error", exc))

    def _loop(self, stream) -> None:
        for batch in self.source:
            if self.stop.is_set():
                return
            out = self.produce(batch)
            event = None
            if stream is not None:
                event = torch.cuda.Event()
                event.record(stream)
            self.produced += 1
            if not self._put(("batch", (out, event))):
                return
        self._put(("end", None))

    def _put(self, item) -> bool:
        """Queue `item`, waiting while the queue is full; False when the consumer has stopped."""
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator:
        try:
            while True:
                start = time.perf_counter()
                kind, value = self.queue.get()
                self.waited += time.perf_counter() - start
                if kind == "end":
                    return
                if kind == "error":
                    raise value
                out, event = value
                if event is not None:
                    current = torch.cuda.current_stream(self.device)
                    current.wait_event(event)  # queued on the GPU: the host does not wait
                    for t in _tensors(out):
                        if t.is_cuda:
                            t.record_stream(current)  # made on the thread's stream, used on this one
                yield out
        finally:
            self.close()

    def close(self) -> None:
        """Stop the thread (a consumer that left early) and wait until it no longer reads `source`,
        so that the source's next iteration cannot race it."""
        self.stop.set()
        while self.thread.is_alive():
            try:
                while True:
                    self.queue.get_nowait()  # unblock a waiting put
            except queue.Empty:
                pass
            self.thread.join(timeout=0.1)


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    return []
