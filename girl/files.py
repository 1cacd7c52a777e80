"""Files written so that a crash leaves the old version or the new one, never half of either.

Every layer writes through these (checkpoints, the market's splits, generate.py's output); this module
imports nothing else of the package.
"""

import fcntl
import hashlib
import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path


class CheckpointError(ValueError):
    """A folder or file that cannot be loaded; the message names it and says what to do."""


def plain_file_name(name) -> bool:
    """Whether a name read from a file (a shard of a weight index, say) names a file inside its folder: no
    separator, no '..', not absolute. Anything else could make the program read or write outside the folder."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name \
        and "\0" not in name


_held = []  # the open lock files of this process: closed, and so released, only when it ends


def lock_output(path) -> int | None:
    """Make this process the one writer of an output: an exclusive flock on a lock file named by the output's
    absolute path, in the system's temporary folder (nothing is added beside the output; runs on one machine
    see each other's locks), which the system releases when the process ends, however it ends (a crash or
    kill -9 leaves no stale lock). None when taken; else the pid of the process that holds it (0 if unknown)."""
    name = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:24]
    folder = Path(tempfile.gettempdir()) / "girl-locks"
    try:
        folder.mkdir(mode=0o777, exist_ok=True)
        fd = os.open(folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:  # no lock can be made here (another user's folder, a read-only /tmp): run unguarded
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip()
        os.close(fd)
        return int(holder) if holder.isdigit() else 0
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _held.append(fd)
    return None


def read_json(path) -> dict:
    """A JSON object read from a file that came with a checkpoint; anything else (not UTF-8, not JSON, not an
    object) is a CheckpointError naming the file, the line and the column."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: not UTF-8 text (byte {e.start}); the file is damaged: copy or save it again") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}:{e.lineno}: not valid JSON at column {e.colno} ({e.msg}); the file is damaged: "
                              "copy or save it again") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a JSON {type(obj).__name__}, not an object; the file is damaged: copy or "
                              "save it again")
    return obj


def shard_names(index) -> list[str]:
    """The shard files a model.safetensors.index.json names (its weight_map's values), sorted, each once; the
    caller refuses any that is not a plain file name."""
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: no weight_map object; the file is damaged: fetch or copy it again")
    return sorted(set(weight_map.values()))


def write_json(path, obj):
    """JSON through a temporary file and a rename; a metric that is not a number (nan: no seeker had both
    labels) is written null, as JSON has no NaN and other readers refuse Python's bare NaN."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_finite(obj), indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _finite(obj):
    """obj with every nan or ±inf float replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_jsonl(path, rows: list[dict]):
    """One JSON object per line, through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)


def recover(out_dir):
    """Finish a save that was killed between its two renames: the folder is gone but its previous version waits
    beside it as .NAME.old; put it back. Leftover .NAME.tmp-* folders of killed saves are deleted."""
    out = Path(out_dir)
    old = out.with_name(f".{out.name}.old")
    if not out.exists() and old.is_dir():
        with suppress(FileNotFoundError):  # another process of a torchrun job put it back first
            os.replace(old, out)
    for tmp in out.parent.glob(f".{out.name}.tmp-*") if out.parent.is_dir() else []:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_dir(out_dir):
    """Build a folder in a temporary sibling and move it into place only when complete.

        with atomic_dir("ckpt/sft") as tmp:
            (tmp / "config.json").write_text(...)

    An interrupted save leaves the previous folder untouched. Killed at any instant (kill -9), it leaves the
    previous folder or the new one in place, or the previous one as .NAME.old for recover() to restore.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    recover(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a checkpoint is an ordinary folder
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.with_name(f".{out.name}.old")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(tmp, out)  # between the two renames only .old exists: recover() puts it back
    shutil.rmtree(old, ignore_errors=True)
