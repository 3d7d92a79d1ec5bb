"""Moving host batches onto the device mesh, ahead of the step that consumes them.

Each JAX process yields its own share of the global batch (NumPy, uint8); ``DeviceFeed``
turns it into global ``jax.Array``s sharded over the mesh with
``jax.make_array_from_process_local_data`` in a background thread, ``depth`` batches
ahead, so host-to-device copies overlap with compute. Its ``get_state`` is the position
of the underlying iterator *after the last batch handed out* (not after the prefetched
ones), so a checkpoint taken at step N resumes exactly at batch N+1. It speaks the
protocol of ``grain.checkpoint.CheckpointSave`` (``get_state() -> bytes``).

``MultiScaleFeed`` serves a multi-scale (MDSR) run: one ``DeviceFeed`` per scale and a rule
giving the scale of each batch; its state holds the number of batches handed out and every
scale's position, so a resumed run continues both the scale sequence and each stream.
"""

from __future__ import annotations

import json
import queue
import threading
from typing import Any, Iterator

import jax

_DONE = object()


class DeviceFeed:
    """Iterator of ``{"lr", "hr"}`` global arrays built from a per-process Grain iterator.

    ``iterator``: yields dicts of ``(B_local, ...)`` NumPy arrays and has
    ``get_state()`` / ``set_state()``; ``sharding``: the batch sharding (axis ``data``).
    """

    def __init__(self, iterator, sharding: jax.sharding.Sharding, depth: int = 2):
        self._it = iterator
        self._sharding = sharding
        self._depth = max(1, depth)
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._state = iterator.get_state()

    def _put_global(self, batch: dict) -> dict:
        for k, v in batch.items():  # JAX would truncate 64-bit integers to 32 bits, silently
            if v.dtype.kind in "iu" and v.dtype.itemsize == 8 and not jax.config.jax_enable_x64:
                raise TypeError(f"batch[{k!r}] is {v.dtype}: a device without 64-bit integers would "
                                "truncate it; send it as 32-bit words (data.blocks.index_words)")
        return {k: jax.make_array_from_process_local_data(self._sharding, v)
                for k, v in batch.items()}

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    batch = next(self._it)
                except StopIteration:
                    self._queue.put(_DONE)
                    return
                item = (self._put_global(batch), self._it.get_state())
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            self._queue.put(e)

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._thread is None:
            self._queue = queue.Queue(maxsize=self._depth)
            self._thread = threading.Thread(target=self._run, name="device-feed", daemon=True)
            self._thread.start()
        item = self._queue.get()
        if item is _DONE:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        batch, self._state = item
        return batch

    def get_state(self) -> bytes:
        """Position after the last batch returned by ``__next__`` (JSON bytes)."""
        return json.dumps(self._state).encode()

    def set_state(self, state: bytes) -> None:
        """Continue from a position saved by ``get_state``; only before the first batch."""
        if self._thread is not None:
            raise RuntimeError("DeviceFeed.set_state must be called before the first batch")
        self._state = json.loads(state)
        self._it.set_state(self._state)

    def start_prefetch(self) -> None:
        """Part of Grain's checkpoint protocol; prefetching starts at the first batch."""

    def close(self) -> None:
        """Stop the background thread, then close the underlying iterator (Grain's prefetch
        threads or worker processes) when it can be closed. Safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


class MultiScaleFeed:
    """Batches of one scale at a time from per-scale feeds: ``{"lr", "hr", "scale"}``.

    ``feeds``: scale -> iterator of ``{"lr": (B, p, p, 3), "hr": (B, p*s, p*s, 3)}`` batches
    with ``get_state``/``set_state`` (``DeviceFeed``s); ``order(n)`` the scale of the ``n``-th
    batch (``data.ScaleOrder``). Batch ``n`` is the next batch of feed ``order(n)``, with
    ``"scale"`` (a Python int) added. A scale's stream advances only when it is drawn, so
    each stream is the one an EDSR run at that scale would read. ``get_state`` (JSON bytes)
    is ``{"batches": n, "scales": {"2": state of feed 2, ...}}``.
    """

    def __init__(self, feeds: dict[int, Any], order):
        if not feeds:
            raise ValueError("MultiScaleFeed needs at least one feed")
        self._feeds = {int(s): f for s, f in feeds.items()}
        self._order = order
        self._batches = 0

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict[str, Any]:
        scale = int(self._order(self._batches))
        if scale not in self._feeds:
            raise ValueError(f"the scale order drew x{scale}, which has no feed ({sorted(self._feeds)})")
        batch = next(self._feeds[scale])
        self._batches += 1
        return {**batch, "scale": scale}

    def get_state(self) -> bytes:
        """Batches handed out and each scale's position after its last batch (JSON bytes)."""
        return json.dumps({"batches": self._batches,
                           "scales": {str(s): json.loads(f.get_state()) for s, f in self._feeds.items()}}).encode()

    def set_state(self, state: bytes) -> None:
        """Continue from ``get_state``'s output; only before the first batch. ValueError when
        the saved scales differ from this feed's."""
        saved = json.loads(state)
        scales = saved.get("scales", {}) if isinstance(saved, dict) else {}
        if sorted(int(s) for s in scales) != sorted(self._feeds):
            raise ValueError(f"the saved data position is of scales {sorted(int(s) for s in scales)}, "
                             f"this run's are {sorted(self._feeds)}")
        for s, f in self._feeds.items():
            f.set_state(json.dumps(scales[str(s)]).encode())
        self._batches = int(saved["batches"])

    def start_prefetch(self) -> None:
        """Part of Grain's checkpoint protocol; each feed prefetches from its first batch."""

    def close(self) -> None:
        """Close every feed (``DeviceFeed.close``). Safe to call twice."""
        for f in self._feeds.values():
            f.close()
