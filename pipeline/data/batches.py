"""Training batches, drawn from labels and streamed endlessly (training ends at `max_steps`).

- `PairBatches`: the classifiers' batches, P classes x 2 images, augmented on the fly;
- `SameClassPairs`: the generators' batches, an exemplar and M other images of its class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from pipeline.data.images import to_tensor


def distributed_place() -> tuple[int, int]:
    """This process's global rank in a distributed run (Lightning's DDP, torchrun) and the number of processes;
    (0, 1) in a single process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank()), int(torch.distributed.get_world_size())
    return 0, 1


class RankSeeded(torch.utils.data.IterableDataset):
    """A batch stream that knows, in a distributed run, the rank of the process that trains on it and how many
    processes there are. Both are read where the stream is iterated, or where it is pickled for a spawned loader
    worker (which is not in the process group itself)."""

    seed: int
    place: tuple[int, int] | None = None  # (rank, world size), fixed when pickled for a worker

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        state["place"] = self.process_place()
        return state

    def process_place(self) -> tuple[int, int]:
        """(rank, world size) of the process this stream serves."""
        return distributed_place() if self.place is None else self.place

    def stream_seed(self, worker: int) -> list[int]:
        """`seed`, the loader worker, and the rank if not 0: every process draws batches of its own, and rank 0,
        like a single process, what a single process always drew."""
        rank = self.process_place()[0]
        return [self.seed, worker] + ([rank] if rank else [])


def apply_transform(transform: Callable[..., dict[str, np.ndarray]], image: np.ndarray) -> np.ndarray:
    """An albumentations transform on one uint8 image [C, S, S] (albumentations works on [S, S] or [S, S, C])."""
    if image.shape[0] == 1:
        return transform(image=image[0])["image"][None]
    return np.ascontiguousarray(transform(image=image.transpose(1, 2, 0))["image"].transpose(2, 0, 1))


class PairBatches(RankSeeded):
    """Endless batches of P classes x 2 images: (x1 [P, C, S, S], x2 [P, C, S, S]), row i = class i.

    `pools[c]` holds the images available for class c, uint8 [n_c, C, S, S] (the real exemplar,
    synthetic drawings, or all real images). The two images of a class are distinct when the pool
    has more than one; each then goes through `transform` (an albumentations pipeline) if given.
    `key`: the param that set `batch_classes`, named in the error when there are too few classes.

    In a distributed run of W processes every process draws the same global batch of W x P distinct classes and
    keeps its own P of them (rank r: rows r*P to r*P + P), so the processes' batches, gathered in rank order, are
    exactly the batch a single process draws with W x P classes: `SiameseModule` gathers the embeddings and
    scores the loss over all of them, with the other processes' classes as negatives, as one process would.
    """

    def __init__(self, pools: list[np.ndarray], batch_classes: int, seed: int,
                 transform: Callable[..., dict[str, np.ndarray]] | None = None, key: str = "siamese.batch_classes"):
        super().__init__()
        self.key = key
        self._check_classes(len(pools), batch_classes, 1)
        if any(len(p) == 0 for p in pools):
            raise ValueError("a training class has no images")
        self.pools = pools
        self.batch_classes = batch_classes
        self.seed = seed
        self.transform = transform

    def _check_classes(self, n: int, batch_classes: int, world: int) -> None:
        if batch_classes * world > n:
            processes = f" x {world} processes = {batch_classes * world} classes a step" if world > 1 else ""
            raise ValueError(
                f"{self.key}={batch_classes}{processes} is larger than the {n} training classes; "
                f"lower it to at most {n // world}"
            )

    def _augment(self, image: np.ndarray) -> np.ndarray:
        return image if self.transform is None else apply_transform(self.transform, image)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        rank, world = self.process_place()
        n, p = len(self.pools), self.batch_classes
        self._check_classes(n, p, world)
        rng = np.random.default_rng([self.seed, worker])  # one stream of global batches, the same in every process
        if self.transform is not None and hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed(self.seed * 1000 + worker + 1_000_003 * rank)
        while True:
            classes = rng.choice(n, size=p * world, replace=False)
            picks = [rng.choice(len(self.pools[c]), size=2, replace=False) if len(self.pools[c]) > 1 else (0, 0)
                     for c in classes]
            first, second = [], []
            for c, (i, j) in list(zip(classes, picks, strict=True))[rank * p:(rank + 1) * p]:
                first.append(self._augment(self.pools[c][i]))
                second.append(self._augment(self.pools[c][j]))
            yield to_tensor(np.stack(first)), to_tensor(np.stack(second))


class SameClassPairs(RankSeeded):
    """Endless batches of (exemplar, targets): images of one class by different instances (drawers).

    images: uint8 [N, C, S, S] (foreground 255); labels: [N]. Yields float exemplars [B, C, S, S]
    and [B, targets, C, S, S] other images of each exemplar's class.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int, targets: int = 1):
        super().__init__()
        classes, inverse = np.unique(labels, return_inverse=True)
        self.by_class = [np.flatnonzero(inverse == k) for k in range(len(classes))]
        short = [k for k, ix in enumerate(self.by_class) if len(ix) < 1 + targets]
        if short:
            raise ValueError(f"every source class needs at least {1 + targets} images to give an exemplar "
                             f"{targets} other image(s) of its class; {len(short)} have fewer (class "
                             f"{classes[short[0]]}: {len(self.by_class[short[0]])})")
        self.images = images
        self.batch_size = batch_size
        self.seed = seed
        self.targets = targets

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng(self.stream_seed(0 if info is None else info.id))
        while True:
            classes = rng.integers(len(self.by_class), size=self.batch_size)
            drawn = np.array([rng.choice(self.by_class[c], size=1 + self.targets, replace=False) for c in classes])
            x = torch.from_numpy(self.images[drawn]).float().div_(255.0)  # [B, 1 + targets, C, S, S]
            yield x[:, 0], x[:, 1:]
