"""Opening files that an input names, as a hostile input would name them.

`pictor data prepare` reads paths that come from data: metadata rows, manifests, folder
listings. Such a path may be a symlink to /dev/zero (an endless read), a FIFO or a socket (a
read that never returns), `../../etc/passwd` or `/etc/hostname` (a file outside the data set),
a chain of symlinks that loops, or a file whose size changes while it is read. The rules here,
applied to every file the job opens:

1. **Confined**: the path is resolved (every symlink followed) and must then lie inside the
   input root, unless the job was started with `--allow-outside-root` (`root=None` here).
2. **Regular files only**: devices, FIFOs, sockets and folders are refused *before* they are
   opened; the file is then opened non-blocking and checked again on the open descriptor, so a
   swap between the check and the open cannot make a read block.
3. **Bounded**: at most `max_bytes` are read, counted as they are read (never trusting the size
   the file system reports: /proc files report 0, a growing file reports what it was).

Failures are `UnsafeFile` with a reason of pictor.data.records.REASONS; the per-record transform
turns it into a rejected record, a metadata file into a ValueError that names it.
"""

from __future__ import annotations

import os
import stat

READ_CHUNK_BYTES = 1 << 20


class UnsafeFile(Exception):
    """A file that must not be read: `reason` (a key of records.REASONS) and a `detail`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def real_root(root: str | os.PathLike[str]) -> str:
    """The resolved form of an input root, as `open_regular` compares against it."""
    return os.path.realpath(root)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str, root: str | None) -> int:
    """A read-only descriptor of the regular file `path` (see the module docstring).

    root: the resolved input root (`real_root`) the file must lie in, or None for anywhere.
    """
    if "\x00" in path:
        raise UnsafeFile("missing_file", f"{path!r} holds a NUL character")
    real = os.path.realpath(path)
    if root is not None and os.path.commonpath([real, root]) != root:
        raise UnsafeFile("outside_root", f"{path} resolves to {real}, outside the input folder "
                         f"{root}; pass --allow-outside-root to read files anywhere")
    try:
        st = os.stat(real)
    except OSError as error:
        raise UnsafeFile("missing_file", f"{type(error).__name__}: {error}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFile("not_regular_file", f"{path} is {_kind(st.st_mode)}")
    try:
        # O_NONBLOCK: were `real` swapped for a FIFO after the stat, open() still returns.
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as error:
        raise UnsafeFile("missing_file", f"{type(error).__name__}: {error}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise UnsafeFile("not_regular_file", f"{path} is {_kind(mode)}")
    os.set_blocking(fd, True)
    return fd


def read_bounded(path: str, max_bytes: int, root: str | None) -> bytes:
    """The bytes of a regular file, never reading more than `max_bytes` + 1 of them."""
    fd = open_regular(path, root)
    try:
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(READ_CHUNK_BYTES, max_bytes + 1 - total))
            if not chunk:
                return b"".join(chunks)
            total += len(chunk)
            if total > max_bytes:
                size = os.fstat(fd).st_size
                raise UnsafeFile("file_too_large", f"more than max_file_bytes={max_bytes} "
                                 f"bytes (the file system reports {size})")
            chunks.append(chunk)
    except OSError as error:
        raise UnsafeFile("missing_file", f"{type(error).__name__}: {error}") from None
    finally:
        os.close(fd)


def open_binary(path: str, root: str | None):  # noqa: ANN201 (an io.BufferedReader)
    """A buffered binary file object over `open_regular` (for metadata files and tars)."""
    return os.fdopen(open_regular(path, root), "rb")
