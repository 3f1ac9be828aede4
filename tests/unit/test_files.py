"""core.files: deterministic upload files, streams, cache and cleanup."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_stressguard.core import files as files_mod
from pytest_stressguard.core.files import (
    BLOCK_SIZE,
    DIR_PREFIX,
    UploadFileFactory,
    content_sha256,
    find_stale_directories,
    iter_content,
    remove_stale_directories,
)
from pytest_stressguard.core.units import UnitsError

MiB = 1 << 20


@pytest.fixture
def factory(tmp_path: Path) -> Iterator[UploadFileFactory]:
    made = UploadFileFactory(tmp_path, register_atexit=False)
    yield made
    made.cleanup()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- content


def test_random_content_follows_its_published_definition() -> None:
    # Block i is SHAKE-128 over (domain, seed, i): stable on every platform and Python version.
    expected = hashlib.shake_128(b"pytest-stressguard/files/1\x007\x000").digest(1000)
    assert b"".join(iter_content(1000, seed=7)) == expected
    # Pinned so an accidental change of the definition is caught (baselines store these).
    assert content_sha256(1000, seed=0) == (
        "18e4ac21db036e00db43325ddc4ae6e4f4549db44a3e23d9277b65274c1eec2c"
    )


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    with UploadFileFactory(tmp_path / "a") as fa, UploadFileFactory(tmp_path / "b") as fb:
        a = fa(3 * MiB + 17, seed=5)
        b = fb(3 * MiB + 17, seed=5)
        c = fb(3 * MiB + 17, seed=6)
        assert a.path != b.path
        assert a.path.read_bytes() == b.path.read_bytes()
        assert a.sha256 == b.sha256
        assert c.sha256 != a.sha256


def test_random_bytes_look_random() -> None:
    data = b"".join(iter_content(MiB, seed=1))
    # Every byte value appears, none dominates: not a repeated pattern or a zero page.
    counts = [data.count(bytes([v])) for v in range(256)]
    assert min(counts) > 3000 and max(counts) < 5300
    assert data[: BLOCK_SIZE // 2] != data[BLOCK_SIZE // 2 :]


def test_sha256_equals_hashlib_over_the_file(factory: UploadFileFactory) -> None:
    for size in (0, 1, BLOCK_SIZE - 1, BLOCK_SIZE, 2 * BLOCK_SIZE + 5):
        f = factory(size, seed=3)
        assert f.size == size == f.path.stat().st_size
        assert f.sha256 == sha256_of(f.path)
        assert f.sha256 == content_sha256(size, seed=3)
        assert f.verify()


def test_stream_is_the_file_without_disk(factory: UploadFileFactory) -> None:
    f = factory(3 * MiB + 123, seed=11)
    on_disk = f.path.read_bytes()
    assert b"".join(f.stream()) == on_disk
    longer = b"".join(f.stream(5 * MiB))
    assert len(longer) == 5 * MiB
    assert longer[: f.size] == on_disk  # the first N bytes of a stream are the file of size N
    assert b"".join(f.stream("1KiB")) == on_disk[:1024]


@pytest.mark.parametrize("chunk_size", [1, 1000, 65536, MiB, MiB + 1, 3 * MiB])
def test_stream_chunk_sizes_cut_the_same_bytes(chunk_size: int) -> None:
    size = 2 * MiB + 999 if chunk_size > 1 else 5000
    chunks = list(iter_content(size, seed=2, chunk_size=chunk_size))
    assert b"".join(chunks) == b"".join(iter_content(size, seed=2))
    assert all(len(c) == chunk_size for c in chunks[:-1])
    assert 0 < len(chunks[-1]) <= chunk_size


def test_chunks_read_the_file_from_disk(factory: UploadFileFactory) -> None:
    f = factory("2500000", seed=4)
    chunks = list(f.chunks("1MB"))
    assert [len(c) for c in chunks] == [1_000_000, 1_000_000, 500_000]
    assert b"".join(chunks) == f.path.read_bytes()
    with f.open() as fh:
        assert fh.read(10) == chunks[0][:10]
    assert os.fspath(f) == str(f.path)


def test_async_stream_yields_the_same_bytes(factory: UploadFileFactory) -> None:
    f = factory(MiB + 3, seed=8)

    async def collect() -> bytes:
        return b"".join([c async for c in f.async_stream(chunk_size=100_000)])

    assert asyncio.run(collect()) == f.path.read_bytes()


def test_zeros_are_sparse_and_hash_correctly(factory: UploadFileFactory) -> None:
    f = factory("200MB", content="zeros")
    st = f.path.stat()
    assert st.st_size == 200_000_000
    if hasattr(st, "st_blocks"):
        assert st.st_blocks * 512 < 1_000_000, "zeros file is not sparse"
    with f.open() as fh:
        fh.seek(123_456_789)
        assert fh.read(4096) == bytes(4096)
    small = factory(MiB + 5, content="zeros")
    assert small.sha256 == sha256_of(small.path) == content_sha256(MiB + 5, content="zeros")
    assert b"".join(small.stream()) == bytes(MiB + 5)


# ----------------------------------------------------------------------------- cache


def test_second_call_is_a_cache_hit(factory: UploadFileFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[int] = []
    real = files_mod._write_random

    def counting(path: Path, seed: int, size: int) -> str:
        writes.append(size)
        return real(path, seed, size)

    monkeypatch.setattr(files_mod, "_write_random", counting)
    a = factory("1MB", seed=1)
    inode = a.path.stat().st_ino
    b = factory(1_000_000, "random", 1)
    assert b == a and b.path.stat().st_ino == inode
    factory("1MB", seed=2)
    factory("1000KB", seed=1)  # same size spelled differently: same key
    assert writes == [1_000_000, 1_000_000]


def test_named_files_share_the_bytes(factory: UploadFileFactory) -> None:
    blob = factory("1MB", seed=1)
    named = factory("1MB", seed=1, name="report.zip")
    other = factory("2MB", seed=1, name="report.zip")
    assert named.name == "report.zip" == other.name
    assert named.path != other.path
    assert named.sha256 == blob.sha256 == sha256_of(named.path)
    assert factory("1MB", seed=1, name="report.zip") == named
    assert other.sha256 == sha256_of(other.path)


def test_files_are_read_only(factory: UploadFileFactory) -> None:
    f = factory(10, seed=1)
    if os.name == "posix" and os.geteuid() == 0:
        assert not f.path.stat().st_mode & 0o222  # root ignores modes; check the mode bits
    else:
        with pytest.raises(PermissionError):
            f.path.open("wb")


# ----------------------------------------------------------------------------- cleanup


def test_cleanup_removes_everything(tmp_path: Path) -> None:
    factory = UploadFileFactory(tmp_path, register_atexit=False)
    assert factory.directory is None  # nothing is created until a file is asked for
    assert list(tmp_path.iterdir()) == []
    factory("1MB")
    factory("1MB", content="zeros", name="z.bin")
    directory = factory.directory
    assert directory is not None and directory.name.startswith(DIR_PREFIX)
    assert directory.parent == tmp_path
    factory.cleanup()
    assert not directory.exists()
    assert list(tmp_path.iterdir()) == []
    factory.cleanup()  # twice is fine
    again = factory("10KB")  # and the factory is usable again
    assert again.path.exists()
    factory.cleanup()
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_leaves_no_partial_file(
    factory: UploadFileFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = files_mod.random_block

    def interrupted(seed: int, index: int, length: int = BLOCK_SIZE) -> bytes:
        if index == 2:
            raise KeyboardInterrupt
        return real(seed, index, length)

    monkeypatch.setattr(files_mod, "random_block", interrupted)
    with pytest.raises(KeyboardInterrupt):
        factory("5MB", seed=1)
    assert factory.directory is not None
    leftovers = [p for p in factory.directory.rglob("*") if p.is_file()]
    assert [p.name for p in leftovers] == [files_mod.OWNER_FILE]
    monkeypatch.setattr(files_mod, "random_block", real)
    assert factory("5MB", seed=1).verify()


CHILD = textwrap.dedent(
    """
    import sys, time
    from pytest_stressguard.core.files import UploadFileFactory
    f = UploadFileFactory(sys.argv[1])
    f("1MB")
    print(f.directory, flush=True)
    if sys.argv[2] == "hang":
        time.sleep(60)
    """
)


def test_atexit_removes_the_directory_when_nobody_calls_cleanup(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path), "exit"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    created = Path(out.stdout.strip())
    assert created.parent == tmp_path
    assert not created.exists()


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_directory_of_a_killed_process_is_found_and_removed(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path), "hang"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        created = Path(child.stdout.readline().strip())
        live = UploadFileFactory(tmp_path, register_atexit=False)
        live("1KB")
        assert find_stale_directories(tmp_path) == []  # both owners are alive
    finally:
        child.kill()
        child.wait(timeout=30)
        assert child.stdout is not None
        child.stdout.close()
    assert find_stale_directories(tmp_path) == [created]
    assert remove_stale_directories(tmp_path) == [created]
    assert not created.exists()
    assert live.directory is not None and live.directory.exists()  # a live one is kept
    live.cleanup()


# ----------------------------------------------------------------------------- memory, speed


def test_a_1gb_stream_runs_in_constant_memory() -> None:
    tracemalloc.start()
    try:
        total = 0
        for chunk in iter_content("1GB", seed=1):
            total += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 1_000_000_000
    assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB"


def test_a_zeros_stream_of_1gb_allocates_one_chunk() -> None:
    tracemalloc.start()
    try:
        total = sum(len(c) for c in iter_content("1GB", content="zeros", chunk_size="64KiB"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 1_000_000_000
    assert peak < MiB


def test_100mb_random_file_is_written_at_disk_speed(factory: UploadFileFactory) -> None:
    start = time.perf_counter()
    f = factory("100MB", seed=42)
    elapsed = time.perf_counter() - start
    # ~0.2-0.5 s on the reference 2-core machine; a Python byte loop would take minutes.
    assert elapsed < 5.0, f"100 MB took {elapsed:.2f}s ({100 / elapsed:.0f} MB/s)"
    assert f.path.stat().st_size == 100_000_000


# ----------------------------------------------------------------------------- errors


def test_bad_size_string_names_the_value() -> None:
    factory = UploadFileFactory(register_atexit=False)
    with pytest.raises(UnitsError, match="'100 parsecs'"):
        factory("100 parsecs")
    with pytest.raises(ValueError, match="negative"):
        factory(-1)
    assert factory.directory is None  # nothing was created for a bad call


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"content": "ones"}, ValueError, "invalid content 'ones'.*'random' and 'zeros'"),
        ({"seed": "1"}, TypeError, "invalid seed '1'"),
        ({"seed": 1.5}, TypeError, "invalid seed"),
        ({"name": "a/b.zip"}, ValueError, "invalid name 'a/b.zip'"),
        ({"name": ".."}, ValueError, "invalid name"),
    ],
)
def test_bad_arguments_are_refused(
    factory: UploadFileFactory, kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        factory("1KB", **kwargs)  # type: ignore[arg-type]
    assert factory.directory is None


def test_bad_chunk_size_is_refused_before_iteration(factory: UploadFileFactory) -> None:
    f = factory(10)
    with pytest.raises(ValueError, match="chunk_size"):
        f.stream(chunk_size=0)
    with pytest.raises(ValueError, match="chunk_size"):
        f.chunks(0)
    with pytest.raises(UnitsError):
        f.stream("ten")
