"""Tests for backprobe.data: loaders, file formats, download safety and mini-batching."""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from backprobe.app import data
from backprobe.app.data import DATASETS, NORMALIZATION, DataSplit, batches, load, read_cifar10_bin

# --------------------------------------------------------------------------------------------
# helpers: tiny files in the exact official formats
# --------------------------------------------------------------------------------------------

IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def idx_bytes(array: np.ndarray) -> bytes:
    """Serialise a uint8 array in the IDX format (magic 0x00000803 for 3-d, 0x00000801 for 1-d)."""
    assert array.dtype == np.uint8
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, *, gz: bool) -> Path:
    raw = idx_bytes(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def make_mnist_dir(root: Path, *, gz: bool, n_train: int = 5, n_test: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, size=n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, size=n_test, dtype=np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for key, array in arrays.items():
        write_idx(root / IDX_NAMES[key], array, gz=gz)
    return arrays


def cifar_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    records = np.concatenate([labels[:, None].astype(np.uint8), images.reshape(len(images), -1)], 1)
    return records.tobytes()


def make_cifar_dir(root: Path, n: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for fname in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        (root / fname).write_bytes(cifar_bytes(images, labels))
        out[fname] = (images, labels)
    return out


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to reach the network fails the test."""

    def boom(*args, **kwargs):
        raise AssertionError("the network must not be used in tests")

    monkeypatch.setattr(data, "_urlopen", boom)
    monkeypatch.setattr("urllib.request.urlopen", boom)


# --------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> DataSplit:
    return load("digits")


def test_digits_shapes(digits):
    assert isinstance(digits, DataSplit)
    assert digits.name == "digits"
    assert digits.num_classes == 10
    assert digits.x_train.shape == (1437, 1, 8, 8)
    assert digits.x_test.shape == (360, 1, 8, 8)
    assert digits.y_train.shape == (1437,) and digits.y_test.shape == (360,)
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    assert digits.input_shape == (1, 8, 8) == data.input_shape(digits)
    assert digits.in_channels == 1 and digits.image_size == (8, 8)
    assert set(digits.y_train.tolist()) == set(range(10))
    assert set(digits.y_test.tolist()) == set(range(10))
    # stratified: every class has 35 or 36 test examples
    counts = torch.bincount(digits.y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    # standardised with the fixed constants: roughly zero mean, unit variance
    assert abs(digits.x_train.mean().item()) < 0.05
    assert abs(digits.x_train.std().item() - 1.0) < 0.05
    assert "digits" in repr(digits) and "1437" in repr(digits)


def test_digits_split_deterministic(digits):
    again = load("digits")
    assert torch.equal(digits.x_train, again.x_train)
    assert torch.equal(digits.y_test, again.y_test)
    other = load("digits", seed=1)
    assert not torch.equal(digits.y_train, other.y_train)
    # train and test are disjoint and together are the whole data set
    raw = load("digits", normalize=False)
    assert raw.x_train.min() >= 0 and raw.x_train.max() <= 1
    from sklearn.datasets import load_digits

    full = load_digits()
    together = torch.cat([raw.x_train, raw.x_test]).flatten(1) * 16
    assert len(together) == 1797
    # the same multiset of images as sklearn's, split without loss
    key = lambda rows: sorted(map(tuple, np.asarray(rows).round().astype(int).tolist()))  # noqa: E731
    assert key(together.numpy()) == key(full.data)
    labels = torch.cat([raw.y_train, raw.y_test])
    assert torch.equal(torch.bincount(labels), torch.bincount(torch.as_tensor(full.target)))


def test_digits_normalisation_constants():
    raw = load("digits", normalize=False)
    norm = load("digits")
    (mean,), (std,) = NORMALIZATION["digits"]
    torch.testing.assert_close(norm.x_train, (raw.x_train - mean) / std)


def test_digits_resize_28():
    split = load("digits", size=28)
    assert split.x_train.shape == (1437, 1, 28, 28)
    assert split.x_test.shape == (360, 1, 28, 28)
    assert split.input_shape == (1, 28, 28)
    raw8 = load("digits", normalize=False)
    expected = torch.nn.functional.interpolate(
        raw8.x_train[:4], size=(28, 28), mode="bilinear", align_corners=False
    )
    raw28 = load("digits", size=28, normalize=False)
    torch.testing.assert_close(raw28.x_train[:4], expected)


def test_bad_size():
    with pytest.raises(ValueError, match="size"):
        load("digits", size=0)


def test_unknown_name():
    with pytest.raises(ValueError, match="digits.*mnist.*fashion-mnist.*cifar10"):
        load("imagenet")
    with pytest.raises(ValueError, match="valid names"):
        data.download("imagenet", "/nonexistent")


# --------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST (IDX)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_round_trip(tmp_path, name, gz):
    arrays = make_mnist_dir(tmp_path, gz=gz)
    raw = load(name, data_dir=tmp_path, normalize=False)
    assert raw.name == name and raw.num_classes == 10
    assert raw.x_train.shape == (5, 1, 28, 28) and raw.x_test.shape == (3, 1, 28, 28)
    assert raw.x_train.dtype == torch.float32 and raw.y_train.dtype == torch.int64
    np.testing.assert_array_equal(
        (raw.x_train[:, 0] * 255).round().to(torch.uint8).numpy(), arrays["train_images"]
    )
    np.testing.assert_array_equal(
        (raw.x_test[:, 0] * 255).round().to(torch.uint8).numpy(), arrays["test_images"]
    )
    np.testing.assert_array_equal(raw.y_train.numpy(), arrays["train_labels"])
    np.testing.assert_array_equal(raw.y_test.numpy(), arrays["test_labels"])

    norm = load(name, data_dir=str(tmp_path))
    (mean,), (std,) = NORMALIZATION[name]
    torch.testing.assert_close(norm.x_train, (raw.x_train - mean) / std)

    small = load(name, data_dir=tmp_path, size=14)
    assert small.x_train.shape == (5, 1, 14, 14)


def test_idx_subdirectory_layouts(tmp_path):
    make_mnist_dir(tmp_path / "mnist", gz=True)
    assert load("mnist", data_dir=tmp_path).x_train.shape == (5, 1, 28, 28)
    make_mnist_dir(tmp_path / "FashionMNIST" / "raw", gz=False)
    assert load("fashion-mnist", data_dir=tmp_path).x_test.shape == (3, 1, 28, 28)


def test_read_idx_dtypes(tmp_path):
    arr = np.arange(24, dtype=">i4").reshape(2, 3, 4)
    raw = bytes([0, 0, 0x0C, 3]) + struct.pack(">3I", 2, 3, 4) + arr.tobytes()
    (tmp_path / "a.idx").write_bytes(raw)
    out = data.read_idx(tmp_path / "a.idx")
    assert out.dtype == np.int32 and out.dtype.isnative
    np.testing.assert_array_equal(out, np.arange(24).reshape(2, 3, 4))


def test_missing_idx_file(tmp_path):
    arrays_dir = tmp_path / "d"
    make_mnist_dir(arrays_dir, gz=True)
    (arrays_dir / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte") as info:
        load("mnist", data_dir=arrays_dir)
    assert "download" in str(info.value)
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load("fashion-mnist", data_dir=tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="nothere"):
        data.read_idx(tmp_path / "nothere")


def test_corrupt_idx_bad_magic(tmp_path):
    make_mnist_dir(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    raw = bytearray(path.read_bytes())
    raw[0] = 0x12
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*magic"):
        load("mnist", data_dir=tmp_path)
    raw[0], raw[2] = 0, 0x42  # unknown type code
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="train-images-idx3-ubyte"):
        data.read_idx(path)


@pytest.mark.parametrize("gz", [True, False])
def test_corrupt_idx_truncated(tmp_path, gz):
    make_mnist_dir(tmp_path, gz=gz)
    name = "t10k-images-idx3-ubyte" + (".gz" if gz else "")
    path = tmp_path / name
    if gz:
        content = gzip.decompress(path.read_bytes())[:-10]
        path.write_bytes(gzip.compress(content))
    else:
        path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.*truncated"):
        load("mnist", data_dir=tmp_path)


def test_corrupt_gzip_and_short_header(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((3, 4, 4), np.uint8)))[:-12])
    with pytest.raises(ValueError, match="x.gz"):
        data.read_idx(path)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(ValueError, match="short.*truncated"):
        data.read_idx(short)
    trailing = tmp_path / "trailing"
    trailing.write_bytes(idx_bytes(np.zeros((2, 2), np.uint8)) + b"\0")
    with pytest.raises(ValueError, match="trailing"):
        data.read_idx(trailing)


def test_idx_inconsistent_pair(tmp_path):
    make_mnist_dir(tmp_path, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4, np.uint8), gz=False)
    with pytest.raises(ValueError, match="5 images.*4 labels"):
        load("mnist", data_dir=tmp_path)


# --------------------------------------------------------------------------------------------
# CIFAR-10 (binary version)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("subdir", ["", "cifar-10-batches-bin"])
def test_cifar_round_trip(tmp_path, subdir):
    files = make_cifar_dir(tmp_path / subdir if subdir else tmp_path)
    raw = load("cifar10", data_dir=tmp_path, normalize=False)
    assert raw.name == "cifar10" and raw.num_classes == 10
    assert raw.x_train.shape == (15, 3, 32, 32) and raw.x_test.shape == (3, 3, 32, 32)
    train_images = np.concatenate([files[f"data_batch_{i}.bin"][0] for i in range(1, 6)])
    train_labels = np.concatenate([files[f"data_batch_{i}.bin"][1] for i in range(1, 6)])
    np.testing.assert_array_equal((raw.x_train * 255).round().to(torch.uint8).numpy(), train_images)
    np.testing.assert_array_equal(raw.y_train.numpy(), train_labels)
    np.testing.assert_array_equal(
        (raw.x_test * 255).round().to(torch.uint8).numpy(), files["test_batch.bin"][0]
    )
    np.testing.assert_array_equal(raw.y_test.numpy(), files["test_batch.bin"][1])

    norm = load("cifar10", data_dir=tmp_path)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALIZATION["cifar10"])
    torch.testing.assert_close(norm.x_train, (raw.x_train - mean) / std)


def test_cifar_channel_layout(tmp_path):
    # a record whose red plane is 1, green 2, blue 3; pixel (row 0, col 1) of red is 7
    record = np.zeros(3073, np.uint8)
    record[0] = 4
    record[1 : 1 + 1024] = 1
    record[1 + 1024 : 1 + 2048] = 2
    record[1 + 2048 :] = 3
    record[1 + 1] = 7
    (tmp_path / "b.bin").write_bytes(record.tobytes())
    images, labels = read_cifar10_bin(tmp_path / "b.bin")
    assert images.shape == (1, 3, 32, 32) and labels.tolist() == [4]
    assert images[0, 0, 0, 1] == 7 and images[0, 0, 1, 0] == 1
    assert images[0, 1].max() == 2 and images[0, 2].min() == 3


def test_cifar_bad_size(tmp_path):
    make_cifar_dir(tmp_path)
    path = tmp_path / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match="data_batch_3.bin.*3073"):
        load("cifar10", data_dir=tmp_path)
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.bin"):
        read_cifar10_bin(empty)


def test_cifar_bad_label(tmp_path):
    record = np.zeros(3073, np.uint8)
    record[0] = 11
    (tmp_path / "bad.bin").write_bytes(record.tobytes())
    with pytest.raises(ValueError, match="bad.bin.*label"):
        read_cifar10_bin(tmp_path / "bad.bin")


def test_cifar_missing_file(tmp_path):
    make_cifar_dir(tmp_path)
    (tmp_path / "test_batch.bin").unlink()
    with pytest.raises(FileNotFoundError, match="test_batch.bin") as info:
        load("cifar10", data_dir=tmp_path)
    assert "download" in str(info.value)


# --------------------------------------------------------------------------------------------
# download: opt-in only, checksums verified (network replaced by local bytes)
# --------------------------------------------------------------------------------------------


def test_download_never_called_by_default(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(data, "download", lambda *a, **k: calls.append(a))
    for name in DATASETS[1:]:
        with pytest.raises(FileNotFoundError):
            load(name, data_dir=tmp_path / name)
    load("digits")
    assert calls == []


def _serve(monkeypatch, payloads: dict[str, bytes]):
    """Replace the network by a dict {file name: bytes}; unknown names raise URLError."""
    requested = []

    def fake_urlopen(url, timeout=60.0):
        requested.append(url)
        fname = url.rsplit("/", 1)[-1]
        if fname not in payloads:
            raise urllib.error.URLError("no route to host")
        return io.BytesIO(payloads[fname])

    monkeypatch.setattr(data, "_urlopen", fake_urlopen)
    return requested


def test_download_mnist_verifies_md5(tmp_path, monkeypatch):
    arrays = make_mnist_dir(tmp_path / "src", gz=True)
    payloads = {
        IDX_NAMES[k] + ".gz": (tmp_path / "src" / (IDX_NAMES[k] + ".gz")).read_bytes()
        for k in arrays
    }
    md5s = {f: hashlib.md5(b).hexdigest() for f, b in payloads.items()}
    monkeypatch.setitem(data._MD5, "mnist", md5s)
    requested = _serve(monkeypatch, payloads)

    split = load("mnist", data_dir=tmp_path / "dst", download=True, normalize=False)
    np.testing.assert_array_equal(split.y_train.numpy(), arrays["train_labels"])
    assert len(requested) == 4
    # already there with the right checksum: nothing fetched again
    data.download("mnist", tmp_path / "dst")
    assert len(requested) == 4
    assert not list((tmp_path / "dst").glob("*.part"))


def test_download_checksum_mismatch(tmp_path, monkeypatch):
    fname = "train-images-idx3-ubyte.gz"
    monkeypatch.setitem(data._MD5, "mnist", {fname: "0" * 32})
    _serve(monkeypatch, {fname: b"not the real file"})
    with pytest.raises(RuntimeError, match="MD5 mismatch"):
        data.download("mnist", tmp_path)
    assert not (tmp_path / fname).exists()
    assert not list(tmp_path.glob("*.part"))


def test_download_network_error(tmp_path, monkeypatch):
    _serve(monkeypatch, {})
    with pytest.raises(RuntimeError, match="could not download"):
        load("fashion-mnist", data_dir=tmp_path, download=True)


def test_download_cifar_extracts_bin_files(tmp_path, monkeypatch):
    src = tmp_path / "src" / "cifar-10-batches-bin"
    files = make_cifar_dir(src, n=2)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for fname in files:
            tar.add(src / fname, arcname=f"cifar-10-batches-bin/{fname}")
        info = tarfile.TarInfo("cifar-10-batches-bin/readme.html")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    archive = buf.getvalue()
    monkeypatch.setitem(
        data._MD5, "cifar10", {"cifar-10-binary.tar.gz": hashlib.md5(archive).hexdigest()}
    )
    _serve(monkeypatch, {"cifar-10-binary.tar.gz": archive})

    split = load("cifar10", data_dir=tmp_path / "dst", download=True, normalize=False)
    assert split.x_train.shape == (10, 3, 32, 32)
    np.testing.assert_array_equal(split.y_test.numpy(), files["test_batch.bin"][1])
    extracted = sorted(p.name for p in (tmp_path / "dst" / "cifar-10-batches-bin").iterdir())
    assert "readme.html" not in extracted and len(extracted) == 6


def test_download_rejects_unsafe_tar_member(tmp_path, monkeypatch):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("../data_batch_1.bin")
        info.size = 3073
        tar.addfile(info, io.BytesIO(bytes(3073)))
    archive = buf.getvalue()
    monkeypatch.setitem(
        data._MD5, "cifar10", {"cifar-10-binary.tar.gz": hashlib.md5(archive).hexdigest()}
    )
    _serve(monkeypatch, {"cifar-10-binary.tar.gz": archive})
    with pytest.raises(RuntimeError, match="unsafe"):
        data.download("cifar10", tmp_path / "dst")
    assert not (tmp_path / "data_batch_1.bin").exists()


def test_digits_download_is_a_no_op(tmp_path):
    split = load("digits", data_dir=tmp_path, download=True)
    assert split.x_train.shape == (1437, 1, 8, 8)
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------
# batches
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("n,b", [(10, 3), (9, 3), (5, 7), (0, 4)])
def test_batches_cover_each_index_once(shuffle, n, b):
    x = torch.arange(n, dtype=torch.float32).view(n, 1) * torch.ones(n, 2)
    y = torch.arange(n)
    seen = []
    sizes = []
    gen = torch.Generator().manual_seed(0)
    for xb, yb in batches(x, y, b, shuffle=shuffle, generator=gen):
        assert torch.equal(xb[:, 0].long(), yb)
        seen += yb.tolist()
        sizes.append(len(yb))
    assert sorted(seen) == list(range(n))
    assert all(s == b for s in sizes[:-1])
    if n:
        assert sizes[-1] == (n % b or b)  # the last smaller batch is kept
    if not shuffle:
        assert seen == list(range(n))


def test_batches_deterministic_given_generator():
    x, y = torch.randn(50, 3), torch.arange(50)

    def order(seed):
        gen = torch.Generator().manual_seed(seed)
        return torch.cat([yb for _, yb in batches(x, y, 8, shuffle=True, generator=gen)])

    assert torch.equal(order(3), order(3))
    assert not torch.equal(order(3), order(4))
    assert not torch.equal(order(3), y)
    # two epochs from one generator differ
    gen = torch.Generator().manual_seed(3)
    e1 = torch.cat([yb for _, yb in batches(x, y, 8, shuffle=True, generator=gen)])
    e2 = torch.cat([yb for _, yb in batches(x, y, 8, shuffle=True, generator=gen)])
    assert not torch.equal(e1, e2)
    # the global RNG is left alone
    state = torch.get_rng_state()
    order(5)
    assert torch.equal(state, torch.get_rng_state())


def test_batches_errors():
    with pytest.raises(ValueError, match="batch_size"):
        list(batches(torch.zeros(3), torch.zeros(3), 0, shuffle=False))
    with pytest.raises(ValueError, match="length"):
        list(batches(torch.zeros(3), torch.zeros(4), 2, shuffle=False))
