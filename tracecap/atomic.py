"""Write several files as one step: all of them, or none.

Each file is written to a temporary file beside its target, then every temporary is moved
into place with ``os.replace``. On any failure - an exception half-way through writing, a
replace that fails - no temporary is left behind and every target that existed before is as
it was (targets are hard-linked to a backup before being replaced, so they can be put back).
Used for the Caffe files and for every other output set tracecap writes.

A target may say how big it will be: its blocks are then reserved before writing (Linux
``fallocate``), and the file is cut where the writing stopped. Reserving the WHOLE file matters
more than it seems: ext4 (``auto_da_alloc``) starts writing a file back to disk at once when it
is renamed over an existing one - unless none of its blocks are still to be allocated. A
reservation a few bytes short sent every reconversion's 100 MB to the disk and made replacing
files 2-4x slower than writing new ones; so the size given should be a bound from above.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path


def write_files(targets, fsync: bool = False) -> None:
    """Write every ``(path, emit)`` of ``targets``; ``emit(write)`` produces the file's bytes.

    The files are written in the order given and moved into place in that order, so the last
    one appears last. With ``fsync`` data and directory entries are flushed before returning.
    A target ``(path, emit, size)`` says ``emit`` writes about ``size`` bytes, best at most that
    many: the space is reserved up front and the file is exactly what ``emit`` wrote either way.
    """
    paths = [Path(t[0]) for t in targets]
    if len({os.path.abspath(p) for p in paths}) != len(paths):
        raise ValueError("the same path is given twice: " + ", ".join(map(str, paths)))
    temps: list[Path] = []
    try:
        for path, target in zip(paths, targets):
            emit, size = target[1], (target[2] if len(target) > 2 else 0)
            with _open_temp(path, temps) as f:
                reserved = size >= _RESERVE_FROM
                if reserved:
                    _reserve(f, size)
                emit(f.write)
                if reserved and f.tell() < size:  # fewer bytes than reserved: no reserved zeros left
                    f.truncate()
                _finish(f, fsync)
        _replace_all(list(zip(temps, paths)), fsync)
    finally:
        for t in temps:
            _unlink_quietly(t)


def _open_temp(target: Path, temps: list):
    """A new temporary file beside ``target``, recorded in ``temps`` at once."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    temps.append(Path(name))
    f = os.fdopen(fd, "wb")
    try:
        os.chmod(name, _mode_for(target))
    except BaseException:
        f.close()
        raise
    return f


_RESERVE_FROM = 1 << 20  # below this, reserving costs more than it saves
_fallocate = None


def _reserve(f, size: int) -> None:
    """Allocate ``size`` bytes of ``f`` (empty, just opened) before it is written; best effort.

    glibc's ``fallocate`` (through ctypes: ``os.posix_fallocate`` would fall back to writing
    zeros on filesystems that cannot allocate, doubling the I/O). The file's length becomes
    ``size``; ``write_files`` cuts it where the writes end.
    """
    global _fallocate
    if _fallocate is None:
        _fallocate = _load_fallocate()
    if _fallocate is not False:
        _fallocate(f.fileno(), 0, 0, size)  # a failure (EOPNOTSUPP, ENOSPC) just leaves it unreserved


def _load_fallocate():
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes
        fn = ctypes.CDLL(None, use_errno=True).fallocate
    except (ImportError, OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


def _mode_for(target: Path) -> int:
    """Keep an existing target's permissions; a new file gets the umask's."""
    try:
        return target.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    try:  # Linux exposes it without changing it (os.umask would, for all threads)
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _finish(f, fsync: bool) -> None:
    if fsync:
        f.flush()
        os.fsync(f.fileno())


def _replace_all(pairs, fsync: bool) -> None:
    """``os.replace`` every (temp, target); if one fails, undo the ones before.

    Before a target is replaced it is hard-linked to a backup name, so it can
    be put back; where hard links are unavailable the undo of that target is
    not possible (the replace itself is still atomic).
    """
    done: list[tuple[Path, bool, Path | None]] = []
    backups: list[Path] = []
    try:
        for temp, target in pairs:
            existed = os.path.lexists(target)
            backup = _link_backup(target) if existed else None
            if backup is not None:
                backups.append(backup)
            os.replace(temp, target)
            done.append((target, existed, backup))
        if fsync:
            for parent in sorted({os.path.abspath(t.parent) for _, t in pairs}):
                _fsync_dir(parent)
    except BaseException:
        for target, existed, backup in reversed(done):
            if backup is not None:
                os.replace(backup, target)
            elif not existed:
                _unlink_quietly(target)
        raise
    finally:
        for b in backups:
            _unlink_quietly(b)


def _link_backup(target: Path) -> Path | None:
    for attempt in range(100):
        backup = target.parent / f".{target.name}.{os.getpid()}.{attempt}.bak"
        try:
            os.link(target, backup)
            return backup
        except FileExistsError:
            continue
        except OSError:
            return None
    return None


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
