"""Continuous batching for a model replica: a batch starts when the model is free.

Ray 2.60's ``@serve.batch`` closes a batch ``batch_wait_timeout_s`` after its first text arrives,
even while the previous batch is still running; the closed batch then waits for the model. Under
load, batches form early and small, and every text that arrives meanwhile waits for the batch
after. Here a batch closes only when the previous one has finished: it takes the texts waiting,
in arrival order, up to ``max_texts`` texts or ``max_tokens`` padded tokens (texts x the longest
one's tokens, the approach of Hugging Face's text-embeddings-inference), whichever comes first. A
text alone on an idle replica runs at once; under load each batch holds what arrived during the
one before. ``wait_s`` (0 by default) lets a batch that is not full wait that long for more texts
once the model is free. A text is whatever the batch function takes (the model replica passes
each text already tokenized, so it is tokenized once).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_TEXTS = 32
DEFAULT_MAX_TOKENS = 4096


@dataclass
class _Waiting:
    text: Any
    tokens: int
    future: asyncio.Future[Any]
    since: float  # the event loop's time when it arrived


class ContinuousBatcher:
    """Gathers single texts from concurrent callers into batches run one at a time in a thread.

    Args:
        run: the batch function, ``texts -> one result per text``; it runs in a worker thread.
        tokens: a text's token count (what the model keeps of it), for the token budget.
        observe: called after each batch with its results, each text's wait (seconds) for it, the
            batch's tokens and its seconds in ``run``.
        max_texts, max_tokens, wait_s: see the module docstring; ``max_tokens=None``: texts only.
    """

    def __init__(
        self, run: Callable[[list[Any]], list[Any]], tokens: Callable[[Any], int] = lambda text: 1,
        max_texts: int = DEFAULT_MAX_TEXTS, max_tokens: int | None = DEFAULT_MAX_TOKENS, wait_s: float = 0.0,
        observe: Callable[[list[Any], list[float], int, float], None] | None = None,
    ) -> None:
        self.run, self.tokens, self.observe = run, tokens, observe
        self.max_texts, self.max_tokens, self.wait_s = max_texts, max_tokens, wait_s
        self.queue: deque[_Waiting] = deque()
        self.worker: asyncio.Task[None] | None = None

    async def __call__(self, text: Any) -> Any:
        """The result for ``text``, computed in a batch with the texts of other callers.

        Raises:
            Exception: whatever ``run`` raised for the batch this text was in.
        """
        future = asyncio.get_running_loop().create_future()
        self.queue.append(_Waiting(text, self.tokens(text), future, asyncio.get_running_loop().time()))
        if self.worker is None or self.worker.done():
            self.worker = asyncio.create_task(self._work())
        return await future

    def take(self) -> list[_Waiting]:
        """The next batch from the front of the queue (at least one text; cancelled callers dropped)."""
        batch: list[_Waiting] = []
        longest = 0
        while self.queue and len(batch) < self.max_texts:
            item = self.queue[0]
            if item.future.done():  # its caller went away: nothing to compute
                self.queue.popleft()
                continue
            padded = (len(batch) + 1) * max(longest, item.tokens)
            if batch and self.max_tokens is not None and padded > self.max_tokens:
                break
            batch.append(self.queue.popleft())
            longest = max(longest, item.tokens)
        return batch

    async def _work(self) -> None:
        """Run batches while texts wait; return when the queue is empty."""
        while self.queue:
            if self.wait_s and len(self.queue) < self.max_texts:
                await asyncio.sleep(self.wait_s)
            batch = self.take()
            if not batch:
                continue
            started = asyncio.get_running_loop().time()
            try:
                results = await asyncio.to_thread(self.run, [item.text for item in batch])
            except Exception as err:  # every caller of the batch gets the error
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(err)
                continue
            for item, result in zip(batch, results):
                if not item.future.done():
                    item.future.set_result(result)
            if self.observe is not None:
                self.observe(results, [started - item.since for item in batch], sum(item.tokens for item in batch),
                             asyncio.get_running_loop().time() - started)
