"""Safe file writes: a file msdn writes is complete on disk before it replaces anything.

Every output, export, checkpoint and report goes through `atomic_write_bytes` (or `atomic_path` for
a writer that needs a path): the bytes go to a hidden temporary file beside the target, every
`write` is checked for short counts, the file is flushed and fsynced, its size (and, if asked, its
content) is checked, it gets the mode a plain `open(..., "w")` would give (or the mode of the file
it replaces), and only then is it renamed onto the target. On any failure the temporary file is
removed, the old target stays as it was, and the error is one `MsdnError` line.

Temporary names live in a namespace of msdn's own and carry the writing process's id
(`.msdn-tmp-PID-XXXXXXXX.EXT`), so a later run can tell a temporary file left by a killed process
from one that is being written right now, and `remove_stale_temps` removes the former and nothing
else: a user's `.notes.tmp-draft.txt` or `.zshrc.tmp-20240101` is never matched, whatever its age.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from deblur_cli.errors import MsdnError, first_line

CHUNK = 1 << 20
TEMP_PREFIX = ".msdn-tmp-"  # msdn's own namespace: the only names the stale-temp sweep may delete
_TEMP = re.compile(r"^\.msdn-tmp-(?P<pid>\d+)-[a-z0-9_]{8}(?:\.[A-Za-z0-9]+)?$")  # + mkstemp's 8 characters
Verify = Callable[[Path], None]


def new_file_mode(target: Path) -> int:
    """The mode of the file being replaced, else what `open(..., "w")` would give (0666 & ~umask)."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def _temp_prefix(target: Path) -> str:
    return f"{TEMP_PREFIX}{os.getpid()}-"  # no part of the target's name: short, and never a user's pattern


@contextlib.contextmanager
def atomic_path(target: Path, verify: Verify | None = None, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `target`; when the block succeeds, fsync it, run `verify(tmp)`
    and rename it onto `target`. Any failure removes it and leaves `target` untouched. With
    `replace=False` the placement itself refuses to replace a file that appeared meanwhile (a hard
    link either creates `target` or fails), so "already exists" can never be checked, then lost.

    The temporary keeps the target's suffix so libraries that pick a format from it still do.
    OS errors (disk full, I/O error, permissions) become one MsdnError line naming `target`.
    """
    target = Path(target)
    mode = new_file_mode(target)
    try:
        fd, name = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=target.suffix, dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise write_error(target, exc) from None
    tmp = Path(name)
    try:
        yield tmp
        _finish(tmp, target, mode, verify, replace)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_error(target, exc) from None
        raise


def atomic_write_bytes(target: Path, data: bytes, verify: Verify | None = None, replace: bool = True) -> None:
    """Write `data` to `target` completely or not at all (see the module docstring)."""
    with atomic_path(target, verify, replace) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        size = tmp.stat().st_size
        if size != len(data):
            raise OSError(errno.EIO, f"only {size} of {len(data)} bytes reached the disk")


def write_error(target: Path, exc: OSError) -> MsdnError:
    kept = "; the existing file is unchanged" if Path(target).exists() else ""
    return MsdnError(f"cannot write {target}: {exc.strerror or first_line(exc)}{kept}")


def _write_chunk(fd: int, data: memoryview) -> int:
    """One `os.write` (a seam for tests that simulate a full or failing disk)."""
    return os.write(fd, data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    done = 0
    while done < len(view):
        n = _write_chunk(fd, view[done : done + CHUNK])
        if n <= 0:  # a write that makes no progress: the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        done += n


def _place(tmp: Path, target: Path) -> None:
    """Move `tmp` to `target` only if no `target` exists, atomically where links are supported."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise MsdnError(f"{target} appeared while msdn was writing it and was left untouched; pass --overwrite "
                        "to replace it") from None
    except OSError:  # a filesystem without hard links: the narrowest check-then-rename there is
        if os.path.lexists(target):
            raise MsdnError(f"{target} appeared while msdn was writing it and was left untouched; pass "
                            "--overwrite to replace it") from None
        os.replace(tmp, target)
        return
    tmp.unlink()


def _finish(tmp: Path, target: Path, mode: int, verify: Verify | None, replace: bool = True) -> None:
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)  # delayed allocation reports a full disk here, not at write()
        os.fchmod(fd, mode)  # mkstemp made it 0600
    finally:
        os.close(fd)
    if verify is not None:
        verify(tmp)
    if replace:
        os.replace(tmp, target)
    else:
        _place(tmp, target)
    with contextlib.suppress(OSError):  # make the rename itself durable where the platform allows
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def is_temp_name(name: str) -> bool:
    """True for the hidden temporary names `atomic_path` makes."""
    return _TEMP.match(name) is not None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove msdn's temporary files in `folder` whose writer is gone (killed, or the machine lost
    power); returns what was removed. Files of a process still running are left alone."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match is None:
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            if not _pid_alive(int(match.group("pid"))):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed
