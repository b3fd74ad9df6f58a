"""Where a study lands: its folder and local stores must not be system folders, and an
existing study folder must be this study's."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SpecError
from ..studydir import StudyDir, is_marker_tmp
from .vocabulary import invalid

if TYPE_CHECKING:
    from .study import Study


#: Folders no study folder or store may be (or lie under): the tool runs as whoever
#: launches it, and ``output_dir: /`` + ``name: etc`` would otherwise write into /etc.
#: `ALLOWED_UNDER_SYSTEM` are the exceptions.
SYSTEM_DIRS = ("/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot", "/dev", "/proc",
               "/sys", "/var")
ALLOWED_UNDER_SYSTEM = ("/var/tmp",)


def expand_user(raw: str) -> Path:
    """``Path(raw).expanduser()``; a ``~user`` that does not exist is an error (Path
    would raise a bare RuntimeError, os.path would leave a literal ``~nosuchuser``)."""
    if raw.startswith("~"):
        head = raw.split("/", 1)[0]
        expanded = os.path.expanduser(head)
        if expanded == head:
            raise invalid(f"{head!r}: no such user (cannot expand {head})")
    return Path(os.path.expanduser(raw))


def system_folder(path: Path) -> str | None:
    """Which protected folder ``path`` is (or lies under), else None. Both the path as
    given (absolute) and its fully resolved form are checked (``/lib`` may link to
    ``/usr/lib``, a symlinked folder may point into ``/etc``). ``/`` and the user's
    home folder itself are protected too (folders under the home are fine)."""
    home = {Path(os.path.expanduser("~")).absolute(), Path(os.path.expanduser("~")).resolve()}
    given = os.path.abspath(path)
    given = "/" + given.lstrip("/") if given.startswith("//") else given   # POSIX keeps a leading //
    for p in dict.fromkeys([Path(given), Path(given).resolve()]):
        if p == Path(p.anchor):
            return "/ (the root folder)"
        if p in home:
            return f"{p} (the home folder itself)"
        if any(p == Path(a) or p.is_relative_to(a) for a in ALLOWED_UNDER_SYSTEM):
            continue
        top = "/" + p.parts[1] if len(p.parts) > 1 else ""
        if top in SYSTEM_DIRS:
            return top
    return None


def _local_store_path(url: str) -> tuple[str, Path] | None:
    """(kind, file or folder) of a local store URL, None for a server (or in-memory) store.
    Kinds: ``sqlite`` (an SQLite file), ``journal`` (an Optuna journal file), ``file``
    (an MLflow file-store folder: ``file://…`` or a bare path)."""
    from urllib.parse import unquote, urlsplit
    if url.startswith("sqlite"):
        rest = url.split("://", 1)[1] if "://" in url else ""
        rest = rest[1:] if rest.startswith("/") else rest     # sqlite:///rel, sqlite:////abs
        rest = rest.split("?", 1)[0]
        if not rest or rest == ":memory:" or rest.startswith("file:"):
            return None
        return "sqlite", Path(unquote(rest)).expanduser()
    if url.startswith("journal://"):
        return "journal", Path(url[len("journal://"):]).expanduser()
    if url.startswith("file:"):
        parts = urlsplit(url)
        return "file", Path(unquote(parts.path or "/"))
    if "://" not in url and not url.startswith(("databricks", "uc:")):
        return "file", Path(url).expanduser()
    return None


def _store_problem(kind: str, path: Path) -> str | None:
    """Why an existing ``path`` cannot be a store of ``kind`` (None if it can)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"cannot be checked ({e.strerror})"
    if kind == "file":
        return None if stat.S_ISDIR(st.st_mode) else "exists and is not a folder (an MLflow file store is one)"
    if not stat.S_ISREG(st.st_mode):
        return f"exists and is not a regular file (an {'SQLite database' if kind == 'sqlite' else 'Optuna journal'} is one)"
    if st.st_size == 0:
        return None   # an empty file: both stores start from one
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if kind == "sqlite":
        return None if head == b"SQLite format 3\x00" else "exists and is not an SQLite database"
    return None if head.lstrip()[:1] == b"{" else "exists and is not an Optuna journal (JSON lines)"


def check_locations(study: "Study", *, folder: bool = True) -> None:
    """Refuse a study that would land where it must not: a study folder or a local store
    (SQLite/journal file, MLflow file store) that is, or lies under, a system folder
    (`system_folder`); a store URL pointing at an existing file of another kind
    (``sqlite:////etc/passwd``); and (``folder=True``) an existing study folder that is
    not this study's: a non-folder, or a non-empty folder without a ``study.json`` naming
    this study. A study folder is only ever created fresh or reused. Reads only; raises
    SpecError (exit 2) naming the field and the path."""
    src = study.source
    sdir = study.study_dir()
    where = "output_dir" if study.output_dir else ("$DLOR_OUTPUT_DIR" if os.environ.get("DLOR_OUTPUT_DIR")
                                                    else "output_dir (default ./runs)")
    bad = system_folder(sdir)
    if bad:
        raise SpecError(f"{src}: {where} + name: the study folder would be {sdir}, which is or lies under "
                        f"the system folder {bad}; set output_dir to a folder of your own")
    if folder:
        check_study_folder(study, sdir)
    for field_name, env, url in (("tracking_uri", "MLFLOW_TRACKING_URI", study.resolved_tracking_uri()),
                                 ("optuna_storage", "DLOR_OPTUNA_STORAGE", study.resolved_optuna_storage())):
        label = (field_name if getattr(study, field_name) else f"${env}" if os.environ.get(env)
                 else f"{field_name} (default: in the study folder)")
        if "\x00" in url:
            raise SpecError(f"{src}: {label}: must not contain a NUL character (got {url!r})")
        loc = _local_store_path(url)
        if loc is None:
            continue
        kind, path = loc
        path = os.path.abspath(path)
        path = Path("/" + path.lstrip("/") if path.startswith("//") else path)
        bad = system_folder(path)
        if bad:
            raise SpecError(f"{src}: {label}: {url} puts the store at {path}, which is or lies under the "
                            f"system folder {bad}; point it at a folder of your own")
        why = _store_problem(kind, path)
        if why:
            raise SpecError(f"{src}: {label}: {url}: {path} {why}")


def read_study_marker(marker: Path, study_name: str, error=SpecError, prefix: str = "") -> dict:
    """A study folder's ``study.json`` as a dict; an unreadable one raises ``error`` naming the
    file (nothing may be written into a folder whose owner cannot be told)."""
    try:
        if marker.stat().st_size > 64 * 1024 * 1024:
            raise ValueError("larger than 64 MiB")
        old = json.loads(marker.read_text())
        if not isinstance(old, dict):
            raise ValueError(f"a JSON {type(old).__name__}, not an object")
    except (OSError, ValueError) as e:
        raise error(f"{prefix}{marker} is unreadable ({e}): cannot tell whether {marker.parent} holds "
                    f"study {study_name!r}; restore the file or remove the folder") from None
    return old


def check_study_folder(study: "Study", sdir: Path) -> None:
    """An existing ``sdir`` must be this study's folder (or an empty folder)."""
    src = study.source
    try:
        st = sdir.stat()
    except FileNotFoundError:
        return
    except OSError as e:
        raise SpecError(f"{src}: study folder {sdir}: cannot be checked ({e.strerror})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise SpecError(f"{src}: study folder {sdir} exists and is not a folder; "
                        f"choose another output_dir or name")
    marker = StudyDir(sdir).marker
    if not marker.exists():
        try:   # a launch killed while writing its first study.json leaves only its tmp file
            empty = all(is_marker_tmp(e.name) for e in os.scandir(sdir))
        except OSError as e:
            raise SpecError(f"{src}: study folder {sdir}: cannot be listed ({e.strerror})") from None
        if empty:
            return
        raise SpecError(f"{src}: study folder {sdir} exists, is not empty and holds no {marker.name}: it is not a "
                        f"dlor-scale study, so nothing is written there; choose another output_dir or name")
    old = read_study_marker(marker, study.name, SpecError, prefix=f"{src}: ")
    if old.get("name") != study.name:
        raise SpecError(f"{src}: study folder {sdir} holds another study ({old.get('name')!r} in its "
                        f"{marker.name}), not {study.name!r}; choose another output_dir or name")
