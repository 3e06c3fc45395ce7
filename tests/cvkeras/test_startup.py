"""Time to the first training step (issue 26): the training pipeline decodes lazily (the file list is shuffled,
not a buffer of decoded images) and finetune's start-up copy check reads only files that share a size."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image


def numbered_pngs(folder: Path, n: int) -> list[str]:
    """``n`` flat-colour PNGs whose red value is their index: an image says which file it came from."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        Image.new("RGB", (20, 20), (i, 100, 50)).save(folder / f"{i:03d}.png")
        paths.append(str(folder / f"{i:03d}.png"))
    return paths


def indices(batches) -> list[int]:
    """The file indices of the images in ``batches`` (read back from the red channel)."""
    out: list[int] = []
    for x, _ in batches:
        out += np.rint(x.numpy()[:, 0, 0, 0]).astype(int).tolist()
    return out


def test_the_first_batch_decodes_its_own_files_only(tmp_path):
    from cvkeras.data.pipeline import make_dataset

    paths = numbered_pngs(tmp_path / "img", 40)

    def pipeline():
        return make_dataset(paths, [0] * 40, (8, 8), 4, 2, training=True, seed=3)

    first = indices(pipeline().take(1))
    assert sorted(first) != list(range(4))  # shuffled
    for i, p in enumerate(paths):  # every other file gone: a shuffle buffer of decoded images would fail here
        if i not in first:
            Path(p).unlink()
    assert indices(pipeline().take(1)) == first


def test_each_cached_pass_holds_every_file_once_in_a_new_order_and_decodes_once(tmp_path):
    from cvkeras.data.pipeline import make_dataset

    paths = numbered_pngs(tmp_path / "img", 24)
    ds = make_dataset(paths, [0] * 24, (8, 8), 8, 2, training=True, seed=5, cache="memory")
    uncached = iter(make_dataset(paths, [0] * 24, (8, 8), 8, 2, training=True, seed=5, cache="none").repeat())
    plain = [sum((indices([next(uncached)]) for _ in range(3)), []) for _ in range(2)]
    assert all(sorted(e) == list(range(24)) for e in plain) and plain[0] != plain[1]
    it = iter(ds)
    order = [indices([next(it)]) for _ in range(9)]  # three passes of three batches
    shutil.rmtree(tmp_path / "img")  # a second and third pass come from the cache
    order += [indices([next(it)]) for _ in range(3)]
    epochs = [sum(order[k:k + 3], []) for k in range(0, 12, 3)]
    assert all(sorted(e) == list(range(24)) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 4  # reshuffled every pass


def test_byte_copies_reads_only_files_that_share_a_size(tmp_path, monkeypatch):
    from cvkeras.data import same_bytes

    read: list[str] = []
    for name in ("edges_digest", "full_digest"):
        real = getattr(same_bytes, name)
        monkeypatch.setattr(same_bytes, name, lambda p, real=real: read.append(p) or real(p))
    rng = np.random.default_rng(0)
    files = {f"u{i}": rng.bytes(1000 + i) for i in range(5)}  # distinct sizes: never read
    files |= {"a": b"x" * 200_000, "a_copy": b"x" * 200_000, "b_same_size": b"x" * 199_999 + b"y"}
    files |= {"c_mid": b"x" * 100_000 + b"z" + b"x" * 99_999}  # same size and edges as a: only the full read tells
    paths = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    idx = {Path(p).name: i for i, p in enumerate(paths)}
    assert same_bytes.byte_copies(paths) == [(idx["a"], idx["a_copy"])]
    assert not {Path(p).name for p in read} & set(f"u{i}" for i in range(5))
    read.clear()
    sides = [Path(p).name != "a_copy" for p in paths]  # a_copy alone on the other side
    assert same_bytes.byte_copies(paths, sides) == [(idx["a"], idx["a_copy"])]
    read.clear()
    only_train = [True] * len(paths)
    assert same_bytes.byte_copies(paths, only_train) == [] and read == []  # no group spans both sides


def test_finetune_check_above_the_near_limit_finds_byte_copies_across_splits(tmp_path, monkeypatch):
    from cvkeras.data import duplicates
    from cvkeras.data.sources import load_source
    from tests.cvkeras.test_check import write_colours

    root = write_colours(tmp_path / "data", per_class=8)
    shutil.copyfile(root / "train" / "red" / "red_001.png", root / "val" / "red" / "red_001_again.png")
    monkeypatch.setattr(duplicates, "NEAR_CHECK_MAX", 4)
    monkeypatch.setattr(duplicates, "file_signatures", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    split = load_source(str(root))
    leaks = duplicates.finetune_leaks(split, dedupe=False)
    assert [(Path(h).name, Path(t).name, kind) for h, t, kind, _ in leaks.rows] == [
        ("red_001_again.png", "red_001.png", "exact")]
    assert any("byte copies across splits only" in w for w in split.warnings)


def test_byte_copies_reads_a_page_from_each_end_of_same_size_files(tmp_path, monkeypatch):
    """Files that share a size but differ are told apart by their edges: a few KiB each, not the whole file."""
    import builtins

    from cvkeras.data import same_bytes

    read = []

    def counting_open(path, mode="r", *args, **kwargs):
        fh = builtins.open(path, mode, *args, **kwargs)
        real_read = fh.read
        fh.read = lambda n=-1: (lambda b: read.append(len(b)) or b)(real_read(n))
        return fh

    monkeypatch.setattr(same_bytes, "open", counting_open, raising=False)
    rng = np.random.default_rng(1)
    paths = []
    for i in range(6):  # one size, different bytes: photos of one camera that happen to match in size
        (tmp_path / f"{i}.jpg").write_bytes(rng.bytes(300_000))
        paths.append(str(tmp_path / f"{i}.jpg"))
    assert same_bytes.byte_copies(paths) == []
    assert sum(read) <= 6 * 2 * 8192  # at most two pages a file (a 64 KiB edge read 128 KiB)


def test_scan_resolves_each_folder_once_and_symlinked_files_to_their_target(tmp_path, monkeypatch):
    from cvkeras.data.sources import scan_folder

    for c in ("a", "b"):
        numbered_pngs(tmp_path / "data" / c, 6)
    numbered_pngs(tmp_path / "elsewhere", 1)
    (tmp_path / "data" / "a" / "link.png").symlink_to(tmp_path / "elsewhere" / "000.png")
    expected = sorted(str(p.resolve()) for p in (tmp_path / "data").rglob("*.png"))
    calls = []
    real = Path.resolve
    monkeypatch.setattr(Path, "resolve", lambda self, *a, **k: calls.append(self) or real(self, *a, **k))
    split = scan_folder(tmp_path / "data", val_split=0.25, seed=0)
    assert sorted(p for p, _ in split.train + split.val) == expected
    assert str(tmp_path / "elsewhere" / "000.png") in expected
    assert len(calls) < 13 - 2  # folders and the one symlink, not each of the 13 files
