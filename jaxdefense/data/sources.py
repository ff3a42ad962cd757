"""Dataset sources: tfds, MNIST idx.gz files, numpy .npz files, and the embedded demo.

Every source returns a `Dataset`: float32 NHWC images in [0, 1], int32 labels. Splits accept
the tfds slicing syntax `train`, `test[:8000]`, `test[8000:]` for every source.
"""
from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import os
import re
import socket

import numpy as np

# Per-channel mean and std in [0, 1] pixel units; models normalize with these internally.
DATASETS = {
    "mnist": dict(shape=(28, 28, 1), num_classes=10, mean=(0.1307,), std=(0.3081,)),
    "cifar10": dict(shape=(32, 32, 3), num_classes=10,
                    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
    "cifar100": dict(shape=(32, 32, 3), num_classes=100,
                     mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)),
    "svhn_cropped": dict(shape=(32, 32, 3), num_classes=10,
                         mean=(0.4377, 0.4438, 0.4728), std=(0.1980, 0.2010, 0.1970)),
    # scikit-learn's 8x8 digits (1,797 images, shipped with the package), upscaled 3x and
    # padded to MNIST's 28x28 so MNIST models and presets apply unchanged.
    "digits": dict(shape=(28, 28, 1), num_classes=10, mean=(0.1307,), std=(0.3081,)),
}

IDX_FILES = {  # MNIST's original file names, as distributed by LeCun et al.
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


class DatasetError(ValueError):
    """A dataset cannot be found, read, or downloaded; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # float32 [N, H, W, C] in [0, 1]
    y: np.ndarray  # int32 [N]
    name: str
    num_classes: int

    def __post_init__(self):
        if self.x.ndim != 4 or self.x.dtype != np.float32:
            raise DatasetError(f"images must be float32 NHWC, got {self.x.dtype} {self.x.shape}")
        if len(self.x) != len(self.y):
            raise DatasetError(f"{len(self.x)} images but {len(self.y)} labels")

    def __len__(self):
        return len(self.x)

    def take(self, n: int | None) -> "Dataset":
        """The first n examples (all when n is None)."""
        if n is None:
            return self
        return dataclasses.replace(self, x=self.x[:n], y=self.y[:n])


def dataset_info(name: str) -> dict:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[name]


def parse_split(split: str) -> tuple[str, int | None, int | None]:
    """`test[8000:]` -> ('test', 8000, None). Percentages are not supported."""
    m = re.fullmatch(r"(\w+)(?:\[(-?\d*):(-?\d*)\])?", split.strip())
    if not m:
        raise DatasetError(f"bad split {split!r}; use e.g. 'train', 'test[:8000]', 'test[8000:]'")
    base, lo, hi = m.groups()
    return base, int(lo) if lo else None, int(hi) if hi else None


def load(name: str, split: str = "train", data_dir: str | None = None) -> Dataset:
    """Load `split` of dataset `name`.

    Order of sources: the embedded demo (`digits`); files in `data_dir` (MNIST idx.gz, or
    `<split>.npz` / `<name>_<split>.npz` with arrays `x` [N,H,W(,C)] and `y` [N]); then tfds
    (prepared data under `data_dir`, or a download that fails fast when offline).
    """
    info = dataset_info(name)
    base, lo, hi = parse_split(split)
    if name == "digits":
        ds = _load_digits(base)
    elif data_dir and _find_local(name, base, data_dir):
        ds = _load_local(name, base, data_dir)
    else:
        ds = _load_tfds(name, base, data_dir)
    if ds.x.shape[1:] != info["shape"]:
        raise DatasetError(f"{name}/{base}: images of shape {ds.x.shape[1:]}, "
                           f"expected {info['shape']}")
    return dataclasses.replace(ds, x=ds.x[lo:hi], y=ds.y[lo:hi], num_classes=info["num_classes"])


# --- embedded demo -------------------------------------------------------------------------

def _load_digits(split: str) -> Dataset:
    """sklearn digits: a fixed 80/20 train/test split (seeded), 28x28x1 in [0, 1]."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)
    x = np.kron(x, np.ones((3, 3), np.float32))            # 8x8 -> 24x24
    x = np.pad(x, ((0, 0), (2, 2), (2, 2)))[..., None]     # -> 28x28x1
    y = d.target.astype(np.int32)
    order = np.random.default_rng(0).permutation(len(x))
    n_train = int(0.8 * len(x))
    idx = {"train": order[:n_train], "test": order[n_train:]}.get(split)
    if idx is None:
        raise DatasetError(f"digits has splits 'train' and 'test', not {split!r}")
    return Dataset(np.ascontiguousarray(x[idx]), y[idx], "digits", 10)


# --- local files ---------------------------------------------------------------------------

def _find_local(name: str, split: str, data_dir: str) -> str | None:
    for sub in (data_dir, os.path.join(data_dir, name)):
        for f in (f"{name}_{split}.npz", f"{split}.npz"):
            if os.path.isfile(os.path.join(sub, f)):
                return os.path.join(sub, f)
        if name == "mnist" and split in IDX_FILES:
            if all(os.path.isfile(os.path.join(sub, f)) for f in IDX_FILES[split]):
                return sub
    return None


def _load_local(name: str, split: str, data_dir: str) -> Dataset:
    path = _find_local(name, split, data_dir)
    if path.endswith(".npz"):
        try:
            with np.load(path) as f:
                x, y = f["x"], f["y"]
        except (KeyError, ValueError, OSError) as e:
            raise DatasetError(f"{path}: cannot read arrays 'x' and 'y' ({e})") from e
        x = np.asarray(x)
        if x.ndim == 3:
            x = x[..., None]
        if x.dtype == np.uint8:
            x = x.astype(np.float32) / 255.0
        x = x.astype(np.float32)
        if x.size and (x.min() < 0 or x.max() > 1):
            raise DatasetError(f"{path}: float images must lie in [0, 1] "
                               f"(got [{x.min():.3g}, {x.max():.3g}]); or store uint8")
        return Dataset(x, np.asarray(y).astype(np.int32).reshape(-1), name, 0)
    img_f, lbl_f = (os.path.join(path, f) for f in IDX_FILES[split])
    x = read_idx(img_f).astype(np.float32)[..., None] / 255.0
    return Dataset(x, read_idx(lbl_f).astype(np.int32), name, 0)


def read_idx(path: str) -> np.ndarray:
    """Read an (optionally gzipped) idx file: magic 0x0000 0x08 ndim, big-endian dims, uint8."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DatasetError(f"{path}: cannot read idx file ({e})") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError(f"{path}: not an unsigned-byte idx file")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(dims)):
        raise DatasetError(f"{path}: truncated idx file ({len(data) - offset} bytes for {dims})")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(dims)


# --- tfds ----------------------------------------------------------------------------------

def _online(host: str = "storage.googleapis.com", timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_tfds(name: str, split: str, data_dir: str | None) -> Dataset:
    """Read prepared tfds data with `tfds.data_source` (no TensorFlow); prepare if needed."""
    import tensorflow_datasets as tfds
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        files = "MNIST idx.gz files, " if name == "mnist" else ""
        hint = (f"pass --data_dir=DIR with prepared tfds data, {files}or '{split}.npz' "
                f"(arrays x, y); or use --dataset=digits, which ships with the package")
        if not _online():
            raise DatasetError(f"{name}: not prepared under {builder.data_dir!r} and this "
                               f"machine is offline; {hint}")
        if importlib.util.find_spec("tensorflow") is None:
            raise DatasetError(f"{name}: preparing tfds data needs TensorFlow: "
                               f"pip install 'jaxdefense[tfds-prepare]'; or {hint}")
        builder.download_and_prepare(file_format="array_record")
    source = builder.as_data_source(split=split)
    x, y = read_source(source, DATASETS[name]["shape"], desc=f"{name}/{split}")
    return Dataset(x.astype(np.float32) / 255.0, y, name, 0)


def read_source(source, shape: tuple, chunk: int = 2048, workers: int | None = None,
                desc: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All of a random-access tfds data source as (uint8 [N, *shape], int32 [N]).

    Reads chunks of records with the source's batched `__getitems__` (one ArrayRecord read
    per chunk), decoding the chunks on a thread pool (PNG decoding releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor
    from tqdm import tqdm
    n = len(source)
    x = np.empty((n, *shape), np.uint8)
    y = np.empty((n,), np.int32)
    getitems = getattr(source, "__getitems__", None) or (lambda idx: [source[i] for i in idx])

    def fill(lo: int) -> int:
        hi = min(lo + chunk, n)
        for i, ex in enumerate(getitems(list(range(lo, hi)))):
            x[lo + i] = np.asarray(ex["image"]).reshape(shape)
            y[lo + i] = ex["label"]
        return hi - lo
    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool, \
            tqdm(total=n, desc=desc, unit="img", disable=desc is None or n < 10 * chunk,
                 leave=False) as bar:
        for done in pool.map(fill, range(0, n, chunk)):
            bar.update(done)
    return x, y
