"""Image files checked once, before training: a truncated or foreign file is named up front, not by a DALI
traceback at whatever step first decodes it.

The check reads two small pieces of each file, no decoder needed: a JPEG starts with SOI (FF D8 FF) and has its
EOI marker (FF D9) within the last KiB (some cameras append bytes after it); a PNG starts with its 8-byte
signature and ends with the IEND chunk. It catches truncated downloads, empty files and non-images (HTML error
pages, GIFs); it does not catch corruption in the middle of an intact-looking file. Files that passed are
cached by (path, size, mtime), so a rerun re-reads only new or changed files; the cache lives in
$XDG_CACHE_HOME/fastssl (default ~/.cache/fastssl), one file per image-folder root.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PNG_SIG = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"
TAIL = 1024


def problem(path: str) -> str | None:
    """Why `path` is not a readable JPEG/PNG, or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - TAIL))
            tail = f.read()
    except OSError as e:
        return e.strerror or str(e)
    if head.startswith(b"\xff\xd8\xff"):
        return None if b"\xff\xd9" in tail else "JPEG without its end marker (truncated)"
    if head == PNG_SIG:
        return None if tail.endswith(PNG_END) else "PNG without its IEND chunk (truncated)"
    return "empty file" if size == 0 else "neither a JPEG nor a PNG"


def _cache_file(root: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fastssl"
    return base / f"verified-{hashlib.sha1(os.path.abspath(root).encode()).hexdigest()[:16]}.json"


def _keys(files: list[str]) -> dict[str, list[int]]:
    out = {}
    for f in files:
        try:
            st = os.stat(f)
            out[f] = [st.st_size, st.st_mtime_ns]
        except OSError:
            out[f] = [-1, -1]  # problem() names the error
    return out


def verify_images(files: list[str], root: str, *, threads: int = 16) -> list[tuple[str, str]]:
    """(file, reason) for every bad file; checks only files not cached as good under `root`."""
    cache = _cache_file(root)
    try:
        good = json.loads(cache.read_text())
    except (OSError, ValueError):
        good = {}
    keys = _keys(files)
    todo = [f for f in files if good.get(f) != keys[f]]
    with ThreadPoolExecutor(threads) as pool:  # I/O bound: network filesystems answer in parallel
        reasons = list(pool.map(problem, todo))
    bad = [(f, r) for f, r in zip(todo, reasons) if r]
    if todo:
        bad_set = {f for f, _ in bad}
        good.update({f: keys[f] for f in todo if f not in bad_set})
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(cache.name + f".{os.getpid()}")
            tmp.write_text(json.dumps(good))
            os.replace(tmp, cache)
        except OSError:
            pass  # a read-only home only costs the check again next run
    return bad
