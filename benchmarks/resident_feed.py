"""What limits the resident feed: `SpanWindows.cut` over one in-memory span, with and without
the prefetch thread, vs plain numpy slicing, on a TaxiBJ-shaped split, batch 16, no Ray.

    python benchmarks/resident_feed.py
    py-spy record -r 200 -f raw --threads -o feed.txt -- python benchmarks/resident_feed.py
"""

from __future__ import annotations

import time

import numpy as np

from simvp_ray.data.batches import SpanWindows, iter_buffer_batches, prefetched, shard_positions
from simvp_ray.data.windows import window_offsets


def main(rounds: int = 3) -> None:
    frames = np.random.default_rng(0).standard_normal((17_600, 2, 32, 32), dtype=np.float32)
    starts = np.arange(len(frames) - 8)
    steps = window_offsets(4, 4)
    windows = SpanWindows([(0, frames)], starts, steps, 4)

    def count(batches) -> float:
        start, n = time.perf_counter(), 0
        for batch in batches:
            n += len(batch["x"])
        return n / (time.perf_counter() - start)

    for epoch in range(rounds):
        positions = shard_positions(len(starts), 0, 1, seed=0, epoch=epoch)
        threaded = count(prefetched(iter_buffer_batches([(windows, positions)], 16, True)))
        inline = count(iter_buffer_batches([(windows, positions)], 16, True))
        order = starts[positions]
        plain = count({"x": frames[order[i:i + 16, None] + steps[None, :]]}
                      for i in range(0, len(order) - 15, 16))
        print(f"windows/s: resident feed (thread) {threaded:,.0f}, same cuts inline "
              f"{inline:,.0f}, plain numpy slicing {plain:,.0f}")


if __name__ == "__main__":
    main()
