"""Key/value cache for incremental decoding.

The original recomputed every layer's keys and values from stored hidden states at each step
(its "mems"). Here each attention layer appends the keys and values of new positions to
preallocated buffers, so a step costs one pass over the new tokens only.
"""

import torch


class LayerKVCache:
    """Keys and values ``[b, heads_local, length, head_dim]`` of the positions already seen by one layer."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.length = 0
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new ``[b, n, s, d]`` keys/values; return views over everything cached so far."""
        new_length = self.length + keys.size(2)
        if self.keys is None or new_length > self.keys.size(2):
            self._grow(
                keys, max(new_length, self.capacity, 2 * (self.keys.size(2) if self.keys is not None else 0))
            )
        self.keys[:, :, self.length : new_length] = keys
        self.values[:, :, self.length : new_length] = values
        self.length = new_length
        return self.keys[:, :, :new_length], self.values[:, :, :new_length]

    def _grow(self, like: torch.Tensor, capacity: int) -> None:
        b, n, _, d = like.shape
        keys = like.new_empty(b, n, capacity, d)
        values = like.new_empty(b, n, capacity, d)
        if self.keys is not None:
            keys[:, :, : self.length] = self.keys[:, :, : self.length]
            values[:, :, : self.length] = self.values[:, :, : self.length]
        self.keys, self.values = keys, values

    def index_batch(self, indices: torch.Tensor) -> None:
        """Keep (and possibly repeat) the batch rows ``indices``, e.g. to expand one context to n samples."""
        if self.keys is not None:
            self.keys = self.keys.index_select(0, indices)
            self.values = self.values.index_select(0, indices)


class KVCache:
    """One :class:`LayerKVCache` per transformer layer, plus the number of positions cached."""

    def __init__(self, num_layers: int, capacity: int = 0):
        self.layers = [LayerKVCache(capacity) for _ in range(num_layers)]

    @property
    def length(self) -> int:
        return self.layers[0].length if self.layers else 0

    def index_batch(self, indices: torch.Tensor) -> "KVCache":
        """Reorder or repeat batch rows in place (``indices`` is a 1-D long tensor); returns self."""
        for layer in self.layers:
            layer.index_batch(indices)
        return self

    def expand_batch(self, batch_size: int) -> "KVCache":
        """Repeat a single-row cache ``batch_size`` times (one context, many samples)."""
        device = self.layers[0].keys.device if self.layers and self.layers[0].keys is not None else "cpu"
        return self.index_batch(torch.zeros(batch_size, dtype=torch.long, device=device))
