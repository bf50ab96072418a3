"""Small image-classification data sets as in-memory tensors, without torchvision.

Every loader returns a :class:`DataSplit` of float32 images ``[N, C, H, W]`` and int64 labels
``[N]``. Pixels are scaled to ``[0, 1]`` and then standardised with fixed per-data-set
constants (:data:`NORMALIZATION`: the usual training-set mean and standard deviation, per
channel for CIFAR-10), so ``x = (pixel / max_pixel - mean) / std``. Pass ``normalize=False`` to
keep the ``[0, 1]`` values.

Data sets (:data:`DATASETS`):

* ``"digits"``: scikit-learn's ``load_digits``, 1797 real 8x8 handwritten digits shipped with
  scikit-learn (no download, no files). Fixed stratified split of 1437 train / 360 test
  images (``train_test_split(test_size=360, random_state=seed, stratify=y)``).
* ``"mnist"``, ``"fashion-mnist"``: the official IDX files (gzipped or not) in ``data_dir``.
* ``"cifar10"``: the official *binary* version (``data_batch_{1..5}.bin``,
  ``test_batch.bin``), in ``data_dir`` or ``data_dir/cifar-10-batches-bin``. Nothing is ever
  unpickled.

Nothing is fetched from the network unless asked for with ``download=True`` (or by calling
:func:`download`), and every fetched file is checked against its published MD5 checksum.

Example:
    >>> split = load("digits")
    >>> split.x_train.shape, split.y_train.shape, split.num_classes
    (torch.Size([1437, 1, 8, 8]), torch.Size([1437]), 10)
    >>> for xb, yb in batches(split.x_train, split.y_train, 256, shuffle=True,
    ...                       generator=torch.Generator().manual_seed(0)):
    ...     pass
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported lazily at run time
    import numpy as np
    import torch

__all__ = [
    "DATASETS",
    "NORMALIZATION",
    "DataSplit",
    "batches",
    "default_data_dir",
    "download",
    "input_shape",
    "load",
    "read_cifar10_bin",
    "read_idx",
]

log = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist", "cifar10")
"""Valid names for :func:`load`."""

NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    # (mean, std) per channel of the pixels scaled to [0, 1].
    # digits: over all 1797 images of sklearn's load_digits (pixels 0..16, divided by 16).
    "digits": ((0.3053,), (0.3760,)),
    # The usual training-set statistics.
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
"""Per-data-set ``(mean, std)`` per channel, applied to pixels scaled to ``[0, 1]``."""

_IDX_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

_CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR_TEST = "test_batch.bin"
_CIFAR_DIR = "cifar-10-batches-bin"
_CIFAR_ARCHIVE = "cifar-10-binary.tar.gz"
_CIFAR_RECORD = 1 + 3 * 32 * 32

# Download sources. MNIST/Fashion-MNIST MD5s are the ones published by torchvision
# (torchvision.datasets.MNIST / FashionMNIST ``resources``); the CIFAR-10 binary MD5 is the one
# published on https://www.cs.toronto.edu/~kriz/cifar.html.
_MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
}

_CIFAR_URL = _MIRRORS["cifar10"][0] + _CIFAR_ARCHIVE

_MD5: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "cifar10": {_CIFAR_ARCHIVE: "c32a1d4ab5d03f1284b67883e8d87530"},
}

# IDX type codes -> big-endian numpy dtype strings.
_IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


# ---------------------------------------------------------------------------------------------
# The split container
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, repr=False)
class DataSplit:
    """A train/test split held in memory.

    Attributes:
        x_train: Training images, float32 ``[N_train, C, H, W]``.
        y_train: Training labels, int64 ``[N_train]`` in ``[0, num_classes)``.
        x_test: Test images, float32 ``[N_test, C, H, W]``.
        y_test: Test labels, int64 ``[N_test]``.
        num_classes: Number of classes.
        name: Data set name, one of :data:`DATASETS`.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    name: str

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The shape ``(C, H, W)`` of one image."""
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)

    @property
    def in_channels(self) -> int:
        """The number of image channels ``C``."""
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """The image size ``(H, W)``."""
        return int(self.x_train.shape[2]), int(self.x_train.shape[3])

    def __repr__(self) -> str:
        return (
            f"DataSplit(name={self.name!r}, train={tuple(self.x_train.shape)}, "
            f"test={tuple(self.x_test.shape)}, num_classes={self.num_classes})"
        )


def input_shape(split: DataSplit) -> tuple[int, int, int]:
    """Return the shape ``(C, H, W)`` of one image of ``split``.

    Args:
        split: A loaded data split.

    Returns:
        ``(C, H, W)``.
    """
    return split.input_shape


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def default_data_dir(name: str) -> Path:
    """Return the directory used when :func:`load` gets no ``data_dir``.

    ``$BACKPROBE_DATA/<name>`` if the environment variable is set, else
    ``~/.cache/backprobe/<name>``.

    Args:
        name: Data set name.

    Returns:
        The directory (not created).
    """
    root = os.environ.get("BACKPROBE_DATA") or os.path.join("~", ".cache", "backprobe")
    return Path(root).expanduser() / name


def _check_name(name: str) -> str:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset name {name!r}; valid names: {', '.join(DATASETS)}")
    return name


def load(
    name: str = "digits",
    *,
    data_dir: str | os.PathLike[str] | None = None,
    size: int | None = None,
    download: bool = False,
    seed: int = 0,
    normalize: bool = True,
) -> DataSplit:
    """Load a data set into memory as a :class:`DataSplit`.

    Images are float32 ``[N, C, H, W]``: pixels scaled to ``[0, 1]``, then (if ``normalize``)
    standardised per channel with the constants in :data:`NORMALIZATION`. Labels are int64.

    Shapes: ``digits`` ``[1437 | 360, 1, 8, 8]``; ``mnist`` / ``fashion-mnist``
    ``[60000 | 10000, 1, 28, 28]``; ``cifar10`` ``[50000 | 10000, 3, 32, 32]``.

    Args:
        name: One of :data:`DATASETS`.
        data_dir: Directory with the data set files (not used by ``digits``). Defaults to
            :func:`default_data_dir`. MNIST-style files are also looked for in
            ``data_dir/<name>`` and in torchvision's ``data_dir/MNIST/raw`` layout; CIFAR-10
            files in ``data_dir/cifar-10-batches-bin``.
        size: Resize images to ``size x size`` with bilinear interpolation
            (``align_corners=False``); e.g. ``size=28`` turns the 8x8 digits into MNIST-sized
            inputs. ``None`` keeps the native size.
        download: If true and files are missing, fetch them with :func:`download` (checksums
            verified). Never touches the network otherwise.
        seed: ``random_state`` of the stratified ``digits`` train/test split (the default gives
            the fixed split); the other data sets have an official split and ignore it.
        normalize: Standardise with :data:`NORMALIZATION`; if false keep values in ``[0, 1]``.

    Returns:
        The train/test split.

    Raises:
        ValueError: Unknown name, bad ``size``, or corrupt/inconsistent files.
        FileNotFoundError: A required file is missing (the message names it and says how to
            get it).
        RuntimeError: ``download=True`` and the download failed.
    """
    _check_name(name)
    if size is not None and (not isinstance(size, int) or size < 1):
        raise ValueError(f"size must be a positive int or None, got {size!r}")

    if name == "digits":
        x_tr, y_tr, x_te, y_te = _load_digits(seed)
    else:
        root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir(name)
        try:
            paths = _locate(name, root)
        except FileNotFoundError:
            if not download:
                raise
            _download_now(name, root)
            paths = _locate(name, root)
        if name == "cifar10":
            x_tr, y_tr, x_te, y_te = _load_cifar10(paths)
        else:
            x_tr, y_tr, x_te, y_te = _load_idx_pair(paths)

    x_train = _to_float(x_tr, name, size, normalize)
    x_test = _to_float(x_te, name, size, normalize)
    import torch

    y_train = torch.as_tensor(y_tr, dtype=torch.int64)
    y_test = torch.as_tensor(y_te, dtype=torch.int64)
    return DataSplit(x_train, y_train, x_test, y_test, 10, name)


def _download_now(name: str, root: Path) -> None:
    # ``load`` has a parameter called ``download`` that hides the module-level function.
    download(name, root)


def _to_float(images: np.ndarray, name: str, size: int | None, normalize: bool) -> torch.Tensor:
    """Turn integer images ``[N, C, H, W]`` into scaled, resized, standardised float32."""
    import torch

    scale = 16.0 if name == "digits" else 255.0
    x = torch.from_numpy(images).to(torch.float32).div_(scale)
    if size is not None and tuple(x.shape[2:]) != (size, size):
        x = torch.nn.functional.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False
        )
    if normalize:
        mean, std = NORMALIZATION[name]
        m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        x = x.sub_(m).div_(s)
    return x.contiguous()


def _load_digits(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the 'digits' data set needs scikit-learn: pip install 'backprobe[data]'"
        ) from err
    import numpy as np

    digits = load_digits()
    images = digits.images.astype(np.uint8)[:, None]  # [1797, 1, 8, 8], values 0..16
    labels = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, labels, test_size=360, random_state=seed, stratify=labels
    )
    return x_tr, y_tr, x_te, y_te


def _candidate_dirs(name: str, root: Path) -> list[Path]:
    dirs = [root, root / name]
    if name == "cifar10":
        dirs = [root, root / _CIFAR_DIR, root / name, root / name / _CIFAR_DIR]
    elif name == "mnist":
        dirs.append(root / "MNIST" / "raw")
    elif name == "fashion-mnist":
        dirs.append(root / "FashionMNIST" / "raw")
    return dirs


def _how_to_get(name: str, root: Path) -> str:
    if name == "cifar10":
        where = (
            f"extract the official binary archive {_CIFAR_URL} so the .bin files lie in "
            f"{root} or {root / _CIFAR_DIR}"
        )
    else:
        where = (
            f"place the official IDX files (gzipped or not) in {root} (from {_MIRRORS[name][0]})"
        )
    return f"Pass download=True to load() (CLI: --download) to fetch it, or {where}."


def _locate(name: str, root: Path) -> dict[str, Path] | list[Path]:
    """Find the files of ``name`` under ``root`` or raise ``FileNotFoundError``."""
    dirs = _candidate_dirs(name, root)
    looked = ", ".join(str(d) for d in dirs)
    if name == "cifar10":
        for d in dirs:
            files = [d / f for f in (*_CIFAR_TRAIN, _CIFAR_TEST)]
            if all(f.is_file() for f in files):
                return files
        # Name the first missing file of the most complete candidate directory.
        best = max(dirs, key=lambda d: sum((d / f).is_file() for f in (*_CIFAR_TRAIN, _CIFAR_TEST)))
        missing = next(f for f in (*_CIFAR_TRAIN, _CIFAR_TEST) if not (best / f).is_file())
        raise FileNotFoundError(
            f"CIFAR-10 file {missing!r} not found (looked in {looked}). {_how_to_get(name, root)}"
        )
    found: dict[str, Path] = {}
    for key, base in _IDX_FILES.items():
        for d in dirs:
            hit = next((d / n for n in (base, base + ".gz") if (d / n).is_file()), None)
            if hit is not None:
                found[key] = hit
                break
        else:
            raise FileNotFoundError(
                f"{name} file {base + '[.gz]'!r} not found (looked in {looked}). "
                f"{_how_to_get(name, root)}"
            )
    return found


def _load_idx_pair(
    paths: dict[str, Path] | list[Path],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    import numpy as np

    assert isinstance(paths, dict)
    out = []
    for split in ("train", "test"):
        img_path, lab_path = paths[f"{split}_images"], paths[f"{split}_labels"]
        images, labels = read_idx(img_path), read_idx(lab_path)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"{img_path}: expected a 3-d uint8 IDX image file, got {images.dtype} "
                f"{images.shape}"
            )
        if labels.ndim != 1 or labels.dtype != np.uint8:
            raise ValueError(
                f"{lab_path}: expected a 1-d uint8 IDX label file, got {labels.dtype} "
                f"{labels.shape}"
            )
        if len(images) != len(labels):
            raise ValueError(
                f"{img_path} holds {len(images)} images but {lab_path} holds {len(labels)} labels"
            )
        if labels.size and int(labels.max()) >= 10:
            raise ValueError(f"{lab_path}: label {int(labels.max())} out of range [0, 10)")
        out += [images[:, None], labels]
    return out[0], out[1], out[2], out[3]


def _load_cifar10(
    paths: dict[str, Path] | list[Path],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    import numpy as np

    assert isinstance(paths, list)
    train = [read_cifar10_bin(p) for p in paths[:-1]]
    x_te, y_te = read_cifar10_bin(paths[-1])
    x_tr = np.concatenate([x for x, _ in train])
    y_tr = np.concatenate([y for _, y in train])
    return x_tr, y_tr, x_te, y_te


# ---------------------------------------------------------------------------------------------
# File formats
# ---------------------------------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    """Read a file, transparently un-gzipping it; corrupt gzip -> ``ValueError``."""
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{path}: corrupt or truncated gzip data ({err})") from err
    return raw


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not.

    Layout: magic ``0x00 0x00 <type code> <ndim>``, then ``ndim`` big-endian uint32 sizes, then
    the data in C order, big-endian. Type codes: ``0x08`` uint8, ``0x09`` int8, ``0x0B`` int16,
    ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64. Gzip is detected by its magic bytes.

    Args:
        path: The file.

    Returns:
        An array of shape ``dims`` in native byte order (e.g. ``uint8 [60000, 28, 28]``).

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: Bad magic number or type code, truncated header or data, trailing bytes,
            or corrupt gzip data; the message names the file.
    """
    import numpy as np

    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path}: not an IDX file (truncated header, {len(data)} bytes)")
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(
            f"{path}: not an IDX file (bad magic number 0x{data[:4].hex()}; expected "
            "0x0000<type code><ndim> with type code one of 08,09,0b,0c,0d,0e)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} of {header} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header
    if actual != expected:
        what = "truncated" if actual < expected else "has trailing bytes"
        raise ValueError(
            f"{path}: IDX data {what}: header says {dims} x {dtype.itemsize} bytes = {expected} "
            f"bytes, file holds {actual}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)


def read_cifar10_bin(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read one file of the CIFAR-10 binary version.

    Each record is 1 label byte followed by 3072 pixel bytes (1024 red, 1024 green, 1024 blue,
    each a 32x32 image in row-major order).

    Args:
        path: E.g. ``data_batch_1.bin`` or ``test_batch.bin``.

    Returns:
        ``(images, labels)``: ``uint8 [N, 3, 32, 32]`` and ``int64 [N]``.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The size is not a positive multiple of 3073 bytes or a label is not in
            ``[0, 10)``; the message names the file.
    """
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 file not found: {path}")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _CIFAR_RECORD != 0:
        raise ValueError(
            f"{path}: size {raw.size} bytes is not a positive multiple of the CIFAR-10 binary "
            f"record size {_CIFAR_RECORD} (1 label byte + 3072 pixel bytes); the file is "
            "truncated or not the binary version"
        )
    records = raw.reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    if int(labels.max()) >= 10:
        raise ValueError(f"{path}: label {int(labels.max())} out of range [0, 10)")
    images = records[:, 1:].reshape(-1, 3, 32, 32).copy()
    return images, labels


# ---------------------------------------------------------------------------------------------
# Download (opt-in only)
# ---------------------------------------------------------------------------------------------


def _urlopen(url: str, timeout: float = 60.0) -> Any:
    """Open ``url``; a separate function so tests can replace it."""
    return urllib.request.urlopen(url, timeout=timeout)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch(filename: str, mirrors: Sequence[str], md5: str, dest: Path) -> None:
    """Fetch ``filename`` from the first mirror that serves it with the right MD5."""
    if dest.is_file() and _md5(dest) == md5:
        return
    part = dest.with_name(dest.name + ".part")
    errors = []
    for base in mirrors:
        url = base + filename
        log.info("downloading %s", url)
        try:
            with _urlopen(url) as response, open(part, "wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
            errors.append(f"{url}: {err}")
            continue
        got = _md5(part)
        if got == md5:
            os.replace(part, dest)
            return
        errors.append(f"{url}: MD5 mismatch (got {got}, expected {md5})")
    if part.exists():
        part.unlink()
    raise RuntimeError(
        f"could not download {filename} to {dest.parent}:\n  "
        + "\n  ".join(errors)
        + "\nCheck the network, or place the official file there by hand."
    )


def _safe_members(tar: tarfile.TarFile, wanted: set[str]) -> list[tarfile.TarInfo]:
    members = []
    for m in tar.getmembers():
        if Path(m.name).name not in wanted:
            continue
        p = Path(m.name)
        if not m.isfile() or p.is_absolute() or ".." in p.parts:
            raise RuntimeError(f"refusing unsafe archive member {m.name!r}")
        members.append(m)
    return members


def download(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Fetch the official files of a data set into ``data_dir`` and verify their MD5 checksums.

    Only called when asked for (``load(..., download=True)`` or directly). Files already present
    with the right checksum are not fetched again.

    * ``mnist``: the four ``*-ubyte.gz`` files, from the first working mirror of
      ``ossci-datasets.s3.amazonaws.com/mnist``, ``storage.googleapis.com/cvdf-datasets/mnist``,
      ``yann.lecun.com/exdb/mnist``.
    * ``fashion-mnist``: the four files from the official Zalando URLs.
    * ``cifar10``: ``cifar-10-binary.tar.gz`` from ``www.cs.toronto.edu/~kriz``; the six
      ``.bin`` files are extracted into ``data_dir/cifar-10-batches-bin`` (with tarfile's
      ``"data"`` filter; nothing else is extracted and nothing is unpickled).

    Args:
        name: ``"mnist"``, ``"fashion-mnist"`` or ``"cifar10"`` (``"digits"`` ships with
            scikit-learn: nothing to do).
        data_dir: Target directory, created if needed; defaults to :func:`default_data_dir`.

    Returns:
        The directory holding the files.

    Raises:
        ValueError: Unknown data set name.
        RuntimeError: Network error or checksum mismatch on every mirror.
    """
    _check_name(name)
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir(name)
    if name == "digits":
        return root
    root.mkdir(parents=True, exist_ok=True)
    if name != "cifar10":
        for filename, md5 in _MD5[name].items():
            _fetch(filename, _MIRRORS[name], md5, root / filename)
        return root

    target = root / _CIFAR_DIR
    wanted = {*_CIFAR_TRAIN, _CIFAR_TEST, "batches.meta.txt"}
    if all((target / f).is_file() for f in (*_CIFAR_TRAIN, _CIFAR_TEST)):
        return target
    archive = root / _CIFAR_ARCHIVE
    _fetch(_CIFAR_ARCHIVE, _MIRRORS["cifar10"], _MD5["cifar10"][_CIFAR_ARCHIVE], archive)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = _safe_members(tar, wanted)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(root, members=members, filter="data")
            else:  # pragma: no cover - old Python without extraction filters
                tar.extractall(root, members=members)  # members checked above
    except (tarfile.TarError, OSError, EOFError) as err:
        raise RuntimeError(f"could not extract {archive}: {err}") from err
    return target


# ---------------------------------------------------------------------------------------------
# Mini-batches
# ---------------------------------------------------------------------------------------------


def batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Iterate once over ``(x, y)`` in mini-batches.

    With ``shuffle``, the order is ``torch.randperm(N, generator=generator)``: pass a seeded
    ``torch.Generator`` to make the order reproducible without touching the global RNG (with
    ``generator=None`` the global RNG is used, so ``torch.manual_seed`` still fixes it). The
    last batch may be smaller; each index appears exactly once per call.

    Args:
        x: Inputs ``[N, ...]``.
        y: Targets ``[N, ...]``.
        batch_size: Batch size ``B >= 1``.
        shuffle: Visit the examples in a random order.
        generator: Generator for the permutation.

    Yields:
        ``(x[idx], y[idx])`` with ``len(idx) == B`` except possibly the last.

    Raises:
        ValueError: ``batch_size < 1`` or ``len(x) != len(y)``.
    """
    import torch

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    n = len(x)
    if len(y) != n:
        raise ValueError(f"x and y differ in length: {n} != {len(y)}")
    if shuffle:
        device = generator.device if generator is not None else torch.device("cpu")
        order = torch.randperm(n, generator=generator, device=device).to(x.device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield x[idx], y[idx.to(y.device)]
    else:
        for start in range(0, n, batch_size):
            yield x[start : start + batch_size], y[start : start + batch_size]
