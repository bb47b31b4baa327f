"""Files written so that a crash never leaves half of one, and JSON read with one-line errors.

Every writer in the package goes through here: checkpoints, exports, eval.json, prepared sets'
metadata, experiment results. A disk that is full or read-only stops the job with one line naming
the path (`UserError`), and the previous file stays intact.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import tempfile
from pathlib import Path

from alexnet.errors import UserError

# Errors that no retry fixes: say which path and what to do instead of a traceback.
_DISK_ERRORS = {
    errno.ENOSPC: "no space left on the device: free some space, or write elsewhere",
    errno.EROFS: "the file system is read-only: write elsewhere",
    errno.EDQUOT: "disk quota exceeded: free some space, or write elsewhere",
    errno.EACCES: "permission denied: write elsewhere, or fix the folder's permissions",
}


def default_file_mode() -> int:
    """The mode open() would give a new file (0o666 less the umask); mkstemp's files are 0600."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def disk_error(path: str | Path, exc: OSError) -> UserError | None:
    """A one-line UserError for an unfixable write error (disk full, read-only), else None."""
    reason = _DISK_ERRORS.get(exc.errno)
    return UserError(f"{path}: cannot write ({reason})") if reason else None


def open_new(path: str | Path):
    """Open a new file for writing (binary). Every writer here goes through it, so that a write
    error is an OSError with its errno (torch.save and safetensors given a file NAME raise a
    RuntimeError without one on a full disk); tests replace it to simulate a full disk."""
    return open(path, "wb")


def _disk_state(folder: Path) -> int | None:
    """ENOSPC or EROFS when the file system holding `folder` is full or read-only, else None: the
    diagnosis of a writer that failed without an OSError (ONNX's exporter writes files itself)."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return errno.EROFS
    if st.f_bavail * st.f_frsize < 1 << 20:  # under 1 MiB free: the write ran out of room
        return errno.ENOSPC
    return None


def _os_error_in(exc: BaseException) -> OSError | None:
    """exc if it is an OSError, else the first OSError it was raised from or while handling."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def check_writable(path: str | Path) -> None:
    """UserError naming `path` when a file cannot be created beside it (read-only, no permission,
    no space): checked BEFORE a long job whose result would go there (nothing is left behind)."""
    path = Path(path)
    try:
        if path.is_dir():
            raise UserError(f"{path}: is a directory; give a file name to write")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.write(fd, b"\0")
        finally:
            os.close(fd)
            os.unlink(tmp)
    except OSError as exc:
        error = disk_error(path, exc)
        raise (error or UserError(f"{path}: cannot write ({exc.strerror or exc}); choose another path")) from None
    code = _disk_state(path.parent)
    if code is not None:
        raise disk_error(path, OSError(code, os.strerror(code)))


def atomic_write_path(path: str | Path, write) -> None:
    """Call write(tmp_path) for a temporary file beside `path`, then rename it over `path`.

    For writers that want a file name (safetensors, ONNX, numpy); they should open it with
    open_new. A crash at any point leaves the old file or the new one, never half of one; the new
    file gets an ordinary file's mode. A full or read-only disk is one UserError naming `path`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise (disk_error(path, exc) or exc) from None
    try:
        write(tmp)
        os.chmod(tmp, default_file_mode())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        cause = _os_error_in(exc)  # torch.save wraps a failed write in a RuntimeError
        if cause is not None and disk_error(path, cause):
            raise disk_error(path, cause) from None
        code = None if isinstance(exc, (KeyboardInterrupt, UserError)) else _disk_state(path.parent)
        if code is not None:  # e.g. torch's "basic_ios::clear: iostream error" on a full disk
            raise disk_error(path, OSError(code, os.strerror(code))) from None
        raise


def atomic_write_bytes(path: str | Path, write) -> None:
    """Call write(file) on a temporary binary file beside `path`, fsync, then rename over `path`."""

    def to_path(tmp: str) -> None:
        with open_new(tmp) as f:
            write(f)
            f.flush()

    atomic_write_path(path, to_path)


def write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) atomically."""
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


def _plain(obj):
    """JSON fallback for numpy/torch scalars and arrays, paths and anything else printable."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def write_json(path: str | Path, obj, *, indent: int = 1) -> None:
    """Write `obj` as JSON (numpy and torch values as lists), atomically, with a final newline."""
    write_text(path, json.dumps(obj, indent=indent, default=_plain) + "\n")


def dumps(obj, *, indent: int | None = 2) -> str:
    """`obj` as JSON text, numpy and torch values as lists (what `--json` prints)."""
    return json.dumps(obj, indent=indent, default=_plain)


def read_json(path: str | Path) -> dict:
    """A JSON file's content; a missing or damaged file is one UserError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable ({exc})") from None


# ---------------------------------------------------------------- what --force may replace

OUTPUT_MARKER = ".alexnet-output"  # in every folder alexnet writes as a whole: JSON {"kind", "files"}
RUN_MARKER = ".alexnet-run"  # a run directory's (alexnet/training/rundir.py): its files are the RUN_FILES
RUN_FILES = (".alexnet-run", "config.json", "config.toml", "env.json", "log.jsonl", "eval.json", "result.json",
             "checkpoints/*.pt", "checkpoints/.*.tmp", "tensorboard/*", "report/index.html", "report/report.json",
             "report/*.png")  # fmt: skip
# Folders written before the marker: the files alexnet put there, by name (fnmatch: * spans folders)
LEGACY = {
    "prepared": ("manifest.json", "classes.json", "stats.npz", "*/images.bin", "*/images.u8", "*/labels.npy",
                 "*/offsets.npy", "*/digests.npy", "*/sources.json"),
    "run": RUN_FILES,
    "report": ("index.html", "report.json", "*.png"),
    "demo": ("data.json", "images/*", "data/*"),
    "experiment": ("result.json", "*.png", "runs/*.json"),
    "bench-gpu": ("gpu.json", "gpu.md", "work/*"),
    "shapes": ("*.jpg",),
}  # fmt: skip


def _files(folder: Path):
    """Relative POSIX paths of the files under `folder` (links included, not followed), sorted."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        rel = Path(root).relative_to(folder)
        out += [(rel / name).as_posix() for name in sorted(files + [d for d in dirs if os.path.islink(Path(root, d))])]
    return out


def _listing(folder: Path, cache: dict) -> set | None:
    """The files a folder's OUTPUT_MARKER lists, or None without a readable one (cached)."""
    if folder not in cache:
        try:
            with open(folder / OUTPUT_MARKER, encoding="utf-8") as f:
                files = json.load(f).get("files")
            cache[folder] = set(files) | {OUTPUT_MARKER} if isinstance(files, list) else None
        except (OSError, ValueError, AttributeError):
            cache[folder] = None
    return cache[folder]


def foreign_file(folder: str | Path, kind: str) -> str | None:
    """A file under `folder` that alexnet did not write, or None: each file must be listed by the
    marker of the nearest folder above it that has one, or lie in a run directory among its
    RUN_FILES, or (a folder written before markers) match the kind's LEGACY names."""
    folder, cache = Path(folder), {}
    for rel in _files(folder):
        parts = rel.split("/")
        for depth in range(len(parts) - 1, -1, -1):  # the nearest marked folder above the file
            base, inner = folder.joinpath(*parts[:depth]), "/".join(parts[depth:])
            listed = _listing(base, cache)
            if listed is not None:
                ours = inner in listed
                break
            if (base / RUN_MARKER).is_file():
                ours = any(fnmatch.fnmatchcase(inner, p) for p in RUN_FILES)
                break
        else:
            ours = any(fnmatch.fnmatchcase(rel, p) for p in LEGACY.get(kind, ()))
        if not ours:
            return rel
    return None


def check_replaceable(folder: str | Path, kind: str, what: str = "--out") -> None:
    """UserError naming one file that alexnet did not write, when --force would replace or remove
    `folder` (a missing or empty folder passes): nothing is deleted that alexnet did not write."""
    folder = Path(folder)
    if not os.path.lexists(folder):
        return
    if not folder.is_dir() or folder.is_symlink():
        raise UserError(f"{what} {folder}: exists and is not a folder alexnet wrote; refusing to replace it "
                        "even with --force; choose another path")  # fmt: skip
    bad = foreign_file(folder, kind)
    if bad is not None:
        raise UserError(f"{what} {folder}: holds {bad}, which alexnet did not write; refusing to replace the "
                        "folder even with --force (nothing was deleted); move that file out, or choose another path")  # fmt: skip


def mark_output(folder: str | Path, kind: str, skip: tuple[str, ...] = ()) -> None:
    """Record the files now under `folder` (outside its marked subfolders and run directories, and
    the folders named in `skip`) in its OUTPUT_MARKER: what a later --force may replace."""
    folder = Path(folder)
    files = [rel for rel in _files(folder) if rel != OUTPUT_MARKER and not _in_marked_subfolder(folder, rel)
             and rel.split("/")[0] not in skip]  # fmt: skip
    write_json(folder / OUTPUT_MARKER, {"kind": kind, "written_by": "alexnet", "files": files})


def _in_marked_subfolder(folder: Path, rel: str) -> bool:
    parts = rel.split("/")
    return any(
        (folder.joinpath(*parts[:d]) / OUTPUT_MARKER).is_file() or (folder.joinpath(*parts[:d]) / RUN_MARKER).is_file()
        for d in range(1, len(parts))
    )


def check_replaceable_file(path: str | Path, ours, what: str = "--out") -> None:
    """UserError when --force would replace a file that `ours(path)` does not recognise as one
    alexnet wrote (or a folder): the user's other files are never overwritten."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    if path.is_dir():
        raise UserError(f"{what} {path}: is a folder; give a file name to write")
    try:
        recognised = ours(path)
    except Exception:  # noqa: BLE001 - an unreadable or foreign file is not ours
        recognised = False
    if not recognised:
        raise UserError(f"{what} {path}: exists and is not a file alexnet wrote; refusing to overwrite it even "
                        "with --force; choose another path")  # fmt: skip
