"""Reading files that someone else may control: never block, never flood.

Config files, web configs and a container's php-fpm configs may be written by
a local user or a tenant. A FIFO must not hang the reader, a device such as
/dev/zero must not be read until memory runs out, and a huge file must not
take minutes to load: a path is first opened with O_PATH, which opens
nothing, and only a regular file is then opened for reading (through
/proc/self/fd, the same inode): opening a device can act (a watchdog arms, a
tape rewinds) and opening a FIFO wakes its writer. Reads stop one byte past
the limit.
"""

from __future__ import annotations

import errno
import os
import stat

_CHUNK = 1 << 16


def open_regular(path: str, *, nofollow: bool = False) -> int:
    """A descriptor open for reading (O_NONBLOCK) on the regular file at path.

    The type is checked on an O_PATH descriptor, which opens nothing, and the
    same inode is then opened through /proc/self/fd: a device is never opened
    and a FIFO's writer never woken. Raises OSError: EINVAL for anything but a
    regular file, ELOOP for a final symlink when nofollow is set; ValueError
    for a path with a NUL byte.
    """
    where = os.open(path, os.O_PATH | os.O_CLOEXEC | (os.O_NOFOLLOW if nofollow else 0))
    try:
        mode = os.fstat(where).st_mode
        if stat.S_ISLNK(mode):  # O_PATH | O_NOFOLLOW opens the link itself
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        return os.open(f"/proc/self/fd/{where}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    finally:
        os.close(where)


def read_regular(path: str, limit: int, *, nofollow: bool = False) -> bytes:
    """The bytes of the regular file at path (open_regular), at most limit
    of them; OSError EFBIG past limit."""
    fd = open_regular(path, nofollow=nofollow)
    try:
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, _CHUNK))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    if left <= 0:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes", path)
    return b"".join(chunks)
