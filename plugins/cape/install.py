"""Install the module into a CAPEv2 checkout, remove it, or report its state.

Two files are written, both starting with :data:`MARKER` so that only files written here are
ever replaced or removed:

* ``modules/processing/telfhash.py`` -- a thin ``Telfhash(Processing)`` class.  CAPE only loads
  processing modules from that folder and names the configuration section after the module the
  class is *defined* in, so the class has to live in a file called ``telfhash.py`` there; it
  hands the work to :func:`telfhash_plugins.cape.enrich.run_module`.
* ``custom/conf/processing.conf.d/telfhash.conf`` -- the ``[telfhash]`` section (CAPE reads
  drop-ins from ``custom/conf/<name>.conf.d/``, so no shipped configuration is edited).  An
  existing drop-in of ours is kept on re-install (it holds the operator's settings) unless
  ``overwrite_config`` is given.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .enrich import Settings

MARKER = "# managed-by: telfhash-cape"
MODULE_REL = Path("modules/processing/telfhash.py")
CONFIG_REL = Path("custom/conf/processing.conf.d/telfhash.conf")
# after CAPE's own modules (default order 1) that build the dropped/payload lists
ORDER = 100

MODULE_TEXT = f'''{MARKER} (written by "telfhash-cape install"; it is replaced on re-install
# and removed by "telfhash-cape uninstall": put local changes elsewhere).
"""telfhash (Trend Micro's ELF symbol TLSH hash) of every ELF file of the analysis.

Adds "telfhash" (or "telfhash_error") to each ELF file dict -- target, dropped files, process
dumps, CAPE payloads, self-extracted and Suricata files -- and stores a summary under the key
"telfhash": each ELF file's telfhash, the groups among them and, with an index configured,
the nearest known samples.  Settings: the [telfhash] section, by default in
custom/conf/processing.conf.d/telfhash.conf.  Needs the telfhash-core package installed in
CAPE's Python environment.
"""

import logging

from lib.cuckoo.common.abstracts import Processing

log = logging.getLogger(__name__)


class Telfhash(Processing):
    """telfhash of every ELF file; groups and known neighbours."""

    order = {ORDER}
    key = "telfhash"

    def run(self):
        try:
            from telfhash_plugins.cape.enrich import run_module
        except Exception as exc:
            log.warning("telfhash: telfhash-core is not importable here (%s); install it into CAPE's environment", exc)
            return {{"errors": ["telfhash-core is not importable: %s" % exc], "files": [], "groups": []}}
        return run_module(self)
'''


def config_text(settings: Settings | None = None) -> str:
    s = settings or Settings()
    yn = lambda b: "yes" if b else "no"  # noqa: E731
    return f"""{MARKER} (written by "telfhash-cape install"; edit the values freely: re-install
# keeps this file; "telfhash-cape uninstall" removes it).
[telfhash]
enabled = {yn(s.enabled)}
# ELF files larger than this (bytes; K/M/G suffixes accepted) are not read: telfhash_error = too_large
max_file_size = {s.max_file_size}
# seconds per file; each file is hashed in a worker process that is stopped when over time
# (telfhash_error = timeout).  0 hashes in CAPE's process, bounded by max_file_size only.
timeout = {s.timeout:g}
# TLSH distance for the groups among this analysis' ELF files and for known neighbours
threshold = {s.threshold}
# a telfhash-core index file ("telfhash index add ..."); empty for none
index = {s.index}
max_neighbours = {s.max_neighbours}
# also record this analysis' ELF files in the index (creates it when missing)
index_add = {yn(s.index_add)}
# distinct ELF files hashed per analysis; the rest get telfhash_error = skipped
max_files = {s.max_files}
"""


@dataclass
class FileState:
    path: Path
    state: str  # "missing", "ours", "ours-modified", "foreign"

    def __str__(self) -> str:
        words = {
            "missing": "not installed",
            "ours": "installed (as written)",
            "ours-modified": "installed (edited since)",
            "foreign": "NOT OURS: a file not written by telfhash-cape is in the way",
        }
        return f"{self.path}: {words[self.state]}"


class InstallError(Exception):
    pass


def _ours(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(MARKER)) == MARKER.encode()
    except OSError:
        return False


def state(path: Path, expected: str | None = None) -> FileState:
    if not path.exists() and not path.is_symlink():
        return FileState(path, "missing")
    if path.is_symlink() or not path.is_file() or not _ours(path):
        return FileState(path, "foreign")
    if expected is not None:
        try:
            if path.read_text() != expected:
                return FileState(path, "ours-modified")
        except (OSError, UnicodeDecodeError):
            return FileState(path, "ours-modified")
    return FileState(path, "ours")


def check_root(root: str | os.PathLike) -> Path:
    r = Path(root).expanduser()
    if not r.is_dir():
        raise InstallError(f"{r}: no such directory")
    missing = [p for p in ("modules/processing", "lib/cuckoo/common") if not (r / p).is_dir()]
    if missing:
        raise InstallError(f"{r} does not look like a CAPEv2 checkout (missing {', '.join(missing)}/)")
    return r


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".telfhash-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def install(root: str | os.PathLike, settings: Settings | None = None, *, overwrite_config: bool = False) -> list[str]:
    """Write both files; returns what was done, line by line.  Raises InstallError (having
    written nothing) when a file that is not ours is in the way."""
    r = check_root(root)
    mod, conf = r / MODULE_REL, r / CONFIG_REL
    sm, sc = state(mod), state(conf)
    foreign = [str(s.path) for s in (sm, sc) if s.state == "foreign"]
    if foreign:
        raise InstallError(
            "refusing to overwrite files not written by telfhash-cape: " + ", ".join(foreign) + " (move them away first)"
        )
    done = []
    _write(mod, MODULE_TEXT)
    done.append(f"{'updated' if sm.state != 'missing' else 'wrote'} {mod}")
    if sc.state == "missing" or overwrite_config:
        _write(conf, config_text(settings))
        done.append(f"{'rewrote' if sc.state != 'missing' else 'wrote'} {conf}")
    else:
        done.append(f"kept {conf} (existing settings; --overwrite-config replaces it)")
    _drop_cache(r)
    return done


def _drop_cache(r: Path) -> None:
    cache = r / MODULE_REL.parent / "__pycache__"
    if cache.is_dir():
        for pyc in cache.glob("telfhash.*.pyc"):
            try:
                pyc.unlink()
            except OSError:
                pass


def uninstall(root: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Remove our files; ``(done, refused)`` -- files not ours are left in place and listed."""
    r = check_root(root)
    done, refused = [], []
    for p in (r / MODULE_REL, r / CONFIG_REL):
        s = state(p)
        if s.state == "missing":
            done.append(f"{p}: not present")
        elif s.state == "foreign":
            refused.append(f"{p}: not written by telfhash-cape, left in place")
        else:
            p.unlink()
            done.append(f"removed {p}")
    _drop_cache(r)
    return done, refused


def status(root: str | os.PathLike) -> dict:
    """Both files' states, the settings CAPE would read from our drop-in, and whether this
    Python can import the code the module delegates to."""
    r = check_root(root)
    sm = state(r / MODULE_REL, MODULE_TEXT)
    sc = state(r / CONFIG_REL)
    out: dict = {"module": sm, "config": sc, "other_sections": []}
    if sc.state in ("ours", "ours-modified"):
        import configparser

        cp = configparser.ConfigParser()
        try:
            cp.read(r / CONFIG_REL)
            out["settings"] = Settings.from_options(dict(cp["telfhash"])) if cp.has_section("telfhash") else None
        except (configparser.Error, UnicodeDecodeError) as exc:
            out["settings_error"] = str(exc)
    # a [telfhash] section elsewhere overrides or duplicates ours, depending on read order
    for cand in (r / "conf/processing.conf", r / "custom/conf/processing.conf", *sorted((r / "conf/processing.conf.d").glob("*.conf")),
                 *sorted((r / CONFIG_REL.parent).glob("*.conf"))):
        if cand == r / CONFIG_REL or not cand.is_file():
            continue
        try:
            if any(line.strip().lower() == "[telfhash]" for line in cand.read_text(errors="replace").splitlines()):
                out["other_sections"].append(str(cand))
        except OSError:
            pass
    return out
