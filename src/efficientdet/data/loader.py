"""Batching: ``collate`` and ``create_loader`` (torch DataLoader with seeded worker processes)."""

from __future__ import annotations

import gc
import random

import numpy as np
import torch


def collate(batch):
    """[(image (3, H, W), target), ...] -> (images (B, 3, H, W), [target, ...])."""
    images = torch.stack([item[0] for item in batch])
    return images, [item[1] for item in batch]


def _seed_worker(worker_id: int) -> None:
    """Seed python/numpy global RNGs from the worker's torch seed (the dataset uses its own
    generator from the same seed)."""
    info = torch.utils.data.get_worker_info()
    assert info is not None  # DataLoader calls worker_init_fn in a worker
    seed = info.seed
    random.seed(seed)
    np.random.seed(seed % 2**32)


class _Loader(torch.utils.data.DataLoader):
    """A DataLoader whose forked workers copy fewer of the parent's memory pages."""

    def __iter__(self):
        if self.num_workers == 0:
            return super().__iter__()
        # The workers are forked in here (once, as they are persistent). A forked worker
        # shares the parent's pages until either process writes to them. Measured per page
        # (issue #11 item 8; one worker's private pages after 20k empty items: 12.8 -> 6.9 MB),
        # two avoidable writes:
        # - torch's worker loop seeds numpy.random, which numpy >= 2 imports lazily: imported
        #   in each worker it costs each worker ~4.5 MB; imported here, once, it is shared.
        # - a worker's cyclic GC walks every object it inherited and writes to each one's
        #   header (~2 MB of pages per worker). Objects frozen at the fork stay out of the
        #   worker's GC; the parent unfreezes them after the fork, so its own garbage is still
        #   collected. A caller who froze objects manages the GC itself: left alone.
        # What remains per worker is CPython's own writes (reference counts, the specialising
        # interpreter's counters in code objects, new objects placed in inherited free space).
        import numpy.random  # noqa: F401

        freeze = gc.get_freeze_count() == 0
        if freeze:
            gc.freeze()
        try:
            return super().__iter__()
        finally:
            if freeze:
                gc.unfreeze()


def create_loader(
    dataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    seed: int = 0,
    distributed: bool = False,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader yielding ``(images (B, 3, H, W) float32, targets list)``.

    ``seed`` fixes the shuffle order and each worker's augmentation seed (base seed from a
    seeded generator + worker id). Workers are persistent. With ``distributed`` a
    DistributedSampler (shuffle, seed) splits the data across ranks; call
    ``loader.sampler.set_epoch(epoch)`` at the start of each epoch.
    """
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    sampler: torch.utils.data.distributed.DistributedSampler | None = None
    if distributed:
        sampler = torch.utils.data.distributed.DistributedSampler(
            dataset, shuffle=shuffle, seed=int(seed), drop_last=drop_last
        )
    return _Loader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
        worker_init_fn=_seed_worker if num_workers > 0 else None,
        generator=generator,
    )
