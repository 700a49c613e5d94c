"""In-memory tensors served a batch at a time: no per-sample Python in the loading hot path."""

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

Split = Literal["train", "val", "test"]


class TensorBatches(Dataset):
    """Tensors indexed together. `__getitems__` lets the DataLoader fetch a whole batch with one
    fancy-index per tensor instead of one `__getitem__` call and a collate per sample."""

    def __init__(self, *tensors: torch.Tensor) -> None:
        if any(len(t) != len(tensors[0]) for t in tensors):
            raise ValueError("all tensors must have the same length")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[index] for t in self.tensors)

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, ...]:
        index = torch.as_tensor(indices)
        return tuple(t[index] for t in self.tensors)


def keep_batch(batch):
    """The batch is already collated by `__getitems__`."""
    return batch


class EpochShuffle(DistributedSampler):
    """The training order: a permutation that depends only on (seed, epoch), Lightning calling `set_epoch`, so a
    run resumed from a checkpoint sees exactly the batches an uninterrupted run would. Under DDP each of the
    `num_replicas` processes takes its share of it, as torch's DistributedSampler does (which it is, so Lightning
    does not swap it for one of its own); in one process it is the whole permutation. `resume_at(epoch,
    position)` makes the next pass start `position` examples into this process's share of that epoch, for a run
    resumed mid-epoch."""

    def __init__(self, data_source: Dataset, seed: int = 0, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(data_source, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self._start = 0

    def resume_at(self, epoch: int, position: int) -> None:
        """Start the next pass at example `position` of this process's share of epoch `epoch` (the examples
        before it were trained on before the checkpoint). Lightning may open the pass before it calls
        `set_epoch`, so the epoch is set here too."""
        self.epoch, self._start = epoch, position

    def __iter__(self):
        start, self._start = self._start, 0  # one pass only: the next epoch starts at its beginning
        yield from list(super().__iter__())[start:]


def make_loader(
    dataset: Dataset, batch_size: int, num_workers: int, train: bool, seed: int = 0, replicas: tuple[int, int] = (1, 0)
) -> DataLoader:
    """`replicas`: (number of processes, this one's rank) sharing the training order."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochShuffle(dataset, seed, *replicas) if train else None,
        drop_last=train and len(dataset) > batch_size,
        collate_fn=keep_batch,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        # Its own generator: otherwise each new iterator draws a seed from the global one, and a resumed run
        # (which creates its iterators in another order) would see different model noise.
        generator=torch.Generator().manual_seed(seed),
    )


class InMemoryDataModule(L.LightningDataModule):
    """Base of the DataModules whose splits are in-memory datasets, set by `setup` as `train_set`, `val_set`
    and `test_set` (a module without a test split serves its validation split as the test one). It owns the
    loaders and `batch`, the one way for anything outside the training loop to get data as a step sees it.
    Its `state_dict` records the place in the training order (epoch, examples done), so a run resumed from a
    checkpoint written mid-epoch goes on with the next batch of that epoch; a subclass that keeps state of its
    own extends both `state_dict` and `load_state_dict`."""

    batch_size: int
    num_workers: int = 0
    shuffle_seed: int = 0  # the seed of the training order; fit.py's --seed sets it
    _resume_order: dict[str, int] | None = None
    train_set: Dataset | None = None
    val_set: Dataset | None = None
    test_set: Dataset | None = None

    def dataset(self, split: Split) -> Dataset:
        """The dataset of a split, set up on first use."""
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, got {split!r}")
        if self.train_set is None:
            self.setup("fit" if split != "test" else "test")
        chosen = getattr(self, f"{split}_set")
        return chosen if chosen is not None else self.val_set

    def loader(self, split: Split, shuffle: bool) -> DataLoader:
        trainer = self.trainer
        replicas = (trainer.world_size, trainer.global_rank) if shuffle and trainer is not None else (1, 0)
        return make_loader(
            self.dataset(split),
            self.batch_size,
            self.num_workers,
            train=shuffle,
            seed=self.shuffle_seed,
            replicas=replicas,
        )

    def train_dataloader(self) -> DataLoader:
        loader = self.loader("train", shuffle=True)
        if self._resume_order is not None:
            loader.sampler.resume_at(**self._resume_order)
            self._resume_order = None
        return loader

    def training_order(self) -> dict[str, int] | None:
        """Where training is in its order: the epoch and the number of its examples already trained on.
        Lightning counts a batch as processed once its step has run, which is what a checkpoint holds; the
        loader itself runs a batch ahead (Lightning prefetches one), so its own count would skip a batch."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return None
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if done >= trainer.num_training_batches:  # a checkpoint at the end of an epoch: the next one starts
            return {"epoch": trainer.current_epoch + 1, "position": 0}
        return {"epoch": trainer.current_epoch, "position": done * self.batch_size}

    def state_dict(self) -> dict[str, Any]:
        order = self.training_order()
        return {} if order is None else {"training_order": order}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_order = state_dict.get("training_order")
        if self._resume_order is not None:
            # Lightning warns that a mid-epoch resume replays the epoch unless the loader saves its state;
            # here the DataModule carries that state (it is restored before any loader is built).
            warnings.filterwarnings("ignore", ".*ended before the epoch ended and your dataloader is not resumable")

    def val_dataloader(self) -> DataLoader:
        return self.loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """`predict` runs over the test split, in order."""
        return self.loader("test", shuffle=False)

    def prepare_batch(self, batch, augment: bool):
        """What the model receives for a collated batch already on its device (e.g. uint8 images to floats in
        [0, 1], plus augmentation when `augment`). The default hands the batch over unchanged."""
        return batch

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        return self.prepare_batch(batch, augment=self.trainer is not None and self.trainer.training)

    def batch(self, split: Split = "test", n: int | None = None, device: torch.device | str = "cpu") -> tuple:
        """The first `n` examples of a split (default one loader batch), in order, on `device`, as a
        validation or test step sees them: through the loader, the transfer to the device and
        `prepare_batch`, without augmentation. Each element of the tuple is concatenated over batches."""
        wanted = self.batch_size if n is None else n
        if wanted < 1:
            raise ValueError(f"ask for at least one example, got n={wanted}")
        parts = []
        for raw in self.loader(split, shuffle=False):
            moved = self.transfer_batch_to_device(self.on_before_batch_transfer(raw, 0), torch.device(device), 0)
            parts.append(self.prepare_batch(moved, augment=False))
            if sum(len(part[0]) for part in parts) >= wanted:
                break
        return tuple(torch.cat(column)[:wanted] for column in zip(*parts, strict=True))


def random_hflip(images: torch.Tensor) -> torch.Tensor:
    """Flip each image left-right with probability 1/2, on the images' device."""
    flip = torch.rand(images.shape[0], device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def random_crop(images: torch.Tensor, padding: int) -> torch.Tensor:
    """Zero-pad by `padding` and cut a random same-size window per image (the CIFAR augmentation of
    He et al. 2016, sec. 4.2), as one gather instead of a loop over the batch."""
    if padding <= 0:
        return images
    b, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (b, 1, 1), device=images.device)
    dx = torch.randint(0, 2 * padding + 1, (b, 1, 1), device=images.device)
    rows = (torch.arange(h, device=images.device)[None, :, None] + dy).expand(b, h, w)
    cols = (torch.arange(w, device=images.device)[None, None, :] + dx).expand(b, h, w)
    batch = torch.arange(b, device=images.device)[:, None, None].expand(b, h, w)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
