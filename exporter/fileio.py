"""Reading files that someone else may control: never block, never flood.

Config files, web configs and a container's php-fpm configs may be written by
a local user or a tenant. A FIFO must not hang the reader, a device such as
/dev/zero must not be read until memory runs out, and a huge file must not
take minutes to load: the open never blocks, anything but a regular file is
refused before a byte is read, and reads stop one byte past the limit.
"""

from __future__ import annotations

import errno
import os
import stat

_CHUNK = 1 << 16


def read_regular(path: str, limit: int, *, nofollow: bool = False) -> bytes:
    """The bytes of the regular file at path, at most limit of them.

    Raises OSError: EINVAL for anything but a regular file, EFBIG past limit,
    ELOOP for a final symlink when nofollow is set; ValueError for a path with
    a NUL byte.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    if nofollow:
        flags |= os.O_NOFOLLOW
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
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
