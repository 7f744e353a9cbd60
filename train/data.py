"""Datasets as uint8 NHWC arrays, and a loader that keeps the whole set on the training device.

Supported: `cifar10` (the `cifar-10-batches-py` pickle folder), `mnist` and `fashion-mnist` (IDX
files, gzipped or not), `digits` (scikit-learn's bundled 8x8 digits: present wherever the
dependencies are installed, so the demo runs offline on any machine).

    images, labels = load_arrays("cifar10", "data", "test")   # (10000, 32, 32, 3) uint8
"""
import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cosinegate.train.cifar_reader import CifarFormatError, read_batch


class DataError(RuntimeError):
    """Missing or malformed dataset; the message names what was expected and where."""


@dataclass(frozen=True)
class DatasetInfo:
    num_classes: int
    shape: tuple          # (H, W, C)
    mean: tuple           # per channel, on [0, 1] pixels
    std: tuple
    augment: bool         # random crop (pad 4) + horizontal flip, paper section 4.1


DATASETS = {
    # Paper section 4.1 normalisation for CIFAR-10 (not the true std 0.247/0.243/0.261).
    "cifar10": DatasetInfo(10, (32, 32, 3), (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), True),
    "mnist": DatasetInfo(10, (28, 28, 1), (0.1307,), (0.3081,), False),
    "fashion-mnist": DatasetInfo(10, (28, 28, 1), (0.2860,), (0.3530,), False),
    "digits": DatasetInfo(10, (8, 8, 1), (0.3053,), (0.3760,), False),
}
DIGITS_TEST_SHARE = 0.2   # digits has no official split: a fixed seeded 80/20 split
FASHION_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


HOLDOUT_SEED = 2  # the held-out draw, independent of the training seed


def holdout_split(count: int, holdout: int) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, held-out indices), each sorted, of a training split of `count` images:
    `holdout` of them, drawn with a fixed seed, are kept out of training (`cg-train --holdout`)."""
    if not 0 <= holdout < count:
        raise DataError(f"--holdout {holdout} must be at least 0 and leave training images: the "
                        f"training split has {count}")
    order = np.random.default_rng(HOLDOUT_SEED).permutation(count)
    return np.sort(order[holdout:]), np.sort(order[:holdout])


def default_data_dir() -> Path | None:
    """$CG_DATA_DIR, else ./data, else None."""
    for candidate in (os.environ.get("CG_DATA_DIR"), "data"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def load_arrays(name: str, data_dir: str | os.PathLike | None, split: str,
                download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 (N, H, W, C), labels int64 (N,)) for split 'train' or 'test'."""
    info = dataset_info(name)
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(data_dir) if data_dir else default_data_dir()
    if name == "digits":
        images, labels = _load_digits(split)
    elif name == "cifar10":
        images, labels = _load_cifar10(root, split, download)
    else:
        images, labels = _load_idx_dataset(name, root, split)
    if images.shape[1:] != info.shape or len(images) != len(labels):
        raise DataError(f"{name} {split}: expected images of shape (N, {info.shape}) and as many "
                        f"labels, got {images.shape} and {labels.shape}")
    return images, labels


def _load_digits(split: str):
    from sklearn.datasets import load_digits
    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # (1797, 8, 8, 1)
    order = np.random.default_rng(0).permutation(len(images))
    n_test = int(round(len(images) * DIGITS_TEST_SHARE))
    idx = order[:n_test] if split == "test" else order[n_test:]
    return images[idx], d.target[idx].astype(np.int64)


def _find_cifar_dir(root: Path | None) -> Path | None:
    if root is None:
        return None
    for cand in (root, root / "cifar-10-batches-py"):
        if (cand / "test_batch").is_file():
            return cand
    return None


def _load_cifar10(root: Path | None, split: str, download: bool):
    folder = _find_cifar_dir(root)
    if folder is None and download:
        folder = _download_cifar10(root or Path("data"))
    if folder is None:
        raise DataError(f"CIFAR-10 not found: expected {root or '<data-dir>'}/cifar-10-batches-py/ "
                        "with data_batch_1..5 and test_batch (python pickle format); pass "
                        "--data-dir, set CG_DATA_DIR, or add --download when online")
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    for n in names:
        path = folder / n
        try:
            data, batch_labels = read_batch(path)  # never unpickles anything but the format's own values
        except FileNotFoundError:
            raise DataError(f"CIFAR-10 file missing: {path}") from None
        except CifarFormatError as e:
            raise DataError(f"CIFAR-10 file is malformed: {e}") from None
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(batch_labels)
    return np.concatenate(images), np.concatenate(labels)


def _download_cifar10(root: Path) -> Path | None:
    import torchvision
    try:
        torchvision.datasets.CIFAR10(str(root), train=False, download=True)
    except Exception as e:
        raise DataError(f"CIFAR-10 download into {root} failed: {e}") from None
    return _find_cifar_dir(root)


_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _load_idx_dataset(name: str, root: Path | None, split: str):
    sub = "mnist" if name == "mnist" else "fashion-mnist"
    candidates = [p for p in ([root, root / sub, root / sub.upper() / "raw", root / "MNIST" / "raw"]
                              if root else []) if p]
    if name == "fashion-mnist":
        candidates.append(Path(FASHION_DEBIAN_DIR))
    img_name, lbl_name = _IDX_FILES[split]
    for folder in candidates:
        img, lbl = _idx_path(folder, img_name), _idx_path(folder, lbl_name)
        if img and lbl:
            images, labels = _read_idx(img), _read_idx(lbl)
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise DataError(f"{name} {split} files do not match: images {images.shape} ({img}), "
                                f"labels {labels.shape} ({lbl})")
            if labels.size and labels.max() >= 10:
                raise DataError(f"{name} labels must be 0..9: {lbl} holds {labels.max()}")
            return images[..., None], labels.astype(np.int64)
    where = ", ".join(str(c) for c in candidates) or "<no --data-dir given>"
    hint = " (Debian: apt-get install dataset-fashion-mnist)" if name == "fashion-mnist" else ""
    raise DataError(f"{name} not found: expected {img_name}[.gz] and {lbl_name}[.gz] in one of: "
                    f"{where}{hint}")


def _idx_path(folder: Path, stem: str) -> Path | None:
    for p in (folder / stem, folder / f"{stem}.gz"):
        if p.is_file():
            return p
    return None


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
            raise ValueError("bad magic number (not an unsigned-byte IDX file)")
        ndim = raw[3]
        dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        return data.reshape(dims).copy()  # writable, as torch expects
    except Exception as e:
        raise DataError(f"IDX file {path} is malformed ({type(e).__name__}: {e})") from None


def normalize(images: np.ndarray | torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW."""
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return (x - mean) / std


class DeviceLoader:
    """Whole dataset normalised once and kept on `device`; batches drawn with an on-device
    permutation from a seeded generator whose state the checkpoint saves (exact resume).

    With `world > 1` every rank draws the same permutation and takes every world-th index, so the
    ranks see disjoint shards of each epoch.
    """

    def __init__(self, images, labels, info: DatasetInfo, batch_size: int, device,
                 train: bool, seed: int = 0, rank: int = 0, world: int = 1,
                 channels_last: bool = False):
        self.x = normalize(images, info).to(device)  # (N, C, H, W)
        if channels_last:
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.y = torch.as_tensor(labels).to(device)
        self.batch_size, self.train = batch_size, train
        self.augment = train and info.augment
        self.rank, self.world = rank, world
        self.generator = torch.Generator(device="cpu").manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.y) // self.world
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def __iter__(self):
        n, device = len(self.y), self.y.device
        shifts = flips = None
        if self.train:
            order = torch.randperm(n, generator=self.generator)[self.rank::self.world]
            order = order[: len(self) * self.batch_size]  # drop the ragged last batch
            if self.augment:
                # The whole epoch's crops and flips in one host-to-device copy: a per-batch copy
                # would make the host wait for the device at every step.
                shifts = torch.randint(0, 9, (2, len(order)), generator=self.generator).to(device)
                flips = (torch.rand(len(order), generator=self.generator) < 0.5).to(device)
        else:
            order = torch.arange(n)[self.rank::self.world]
        order = order.to(device)
        for start in range(0, len(order), self.batch_size):
            batch = slice(start, start + self.batch_size)
            idx = order[batch]
            x = self.x[idx]
            if shifts is not None:
                x = _crop_flip(x, shifts[:, batch], flips[batch])
            yield x, self.y[idx]


def _crop_flip(x: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Random 4-pixel-padded crop (offsets `shifts` (2, B) in 0..8) and horizontal flip (`flips`
    (B,) bool), vectorised over the batch."""
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    rows = (shifts[0][:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (shifts[1][:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    out = padded[bi, ci, rows, cols]
    return torch.where(flips[:, None, None, None], out.flip(3), out)
