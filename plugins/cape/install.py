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


def _ini_value(value: object) -> str:
    """A value as CAPE's ConfigParser (BasicInterpolation) gives it back: ``%`` doubled; no
    line breaks (they would start a new key or a continuation)."""
    text = str(value)
    if any(c in text for c in "\r\n\x00"):
        raise InstallError(f"{text!r}: line breaks and NUL are not possible in a CAPE setting")
    if text != text.strip():
        raise InstallError(f"{text!r}: leading or trailing blanks would be lost in a CAPE setting")
    return text.replace("%", "%%")


def config_text(settings: Settings | None = None) -> str:
    s = settings or Settings()

    def yn(b: bool) -> str:
        return "yes" if b else "no"

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
index = {_ini_value(s.index)}
max_neighbours = {s.max_neighbours}
# also record this analysis' ELF files in the index (creates it when missing)
index_add = {yn(s.index_add)}
# distinct ELF files hashed per analysis; the rest get telfhash_error = skipped
max_files = {s.max_files}
# seconds for all ELF files of an analysis; files not reached get telfhash_error = budget.
# 0: a quarter of CAPE's processing timeout (utils/process.py --processing-timeout or
# CAPE_PROCESSING_TIMEOUT, else 300 s).  Never more than half of that timeout less the time
# the processing modules before this one took, so that CAPE always finishes in time.
budget = {s.budget:g}
# add a CAPE detection (family) when a known neighbour with a family label is this close
detections = {yn(s.detections)}
detection_distance = {s.detection_distance}
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


# ----------------------------------------------------------------------------- CAPE's reading


def config_files(r: Path, name: str = "processing") -> list[Path]:
    """The files CAPE's ``Config(name)`` reads, in its order (lib/cuckoo/common/config.py)."""
    files = [r / "conf" / "default" / f"{name}.conf.default"]
    if "CAPE_DISABLE_ROOT_CONFIGS" not in os.environ:
        files.append(r / "conf" / f"{name}.conf")
        files.extend(sorted((r / "conf" / f"{name}.conf.d").glob("*.conf")))
    files.append(r / "custom" / "conf" / f"{name}.conf")
    files.extend(sorted((r / "custom" / "conf" / f"{name}.conf.d").glob("*.conf")))
    if "CAPE_CD" in os.environ:
        files.append(Path(os.environ["CAPE_CD"]) / f"{name}.conf")
    return files


def cape_read(files: list[Path], override: dict[Path, str] | None = None) -> dict[str, dict[str, object]]:
    """Read ``files`` the way CAPE's ``_BaseConfig._read_files`` does -- one ConfigParser with
    the environment as ``ENV:`` defaults (BasicInterpolation), every option of every section
    read with getboolean/getint/get -- and return ``{section: {option: value}}``.  Whatever
    CAPE would raise (and die of, in utils/process.py) is raised: configparser.Error,
    UnicodeDecodeError.  ``override`` gives text to use instead of a file's content."""
    import configparser

    override = override or {}
    cp = configparser.ConfigParser({f"ENV:{k}": v.replace("%", "%%") for k, v in os.environ.items()})
    for f in files:
        if f in override:
            cp.read_string(override[f], source=str(f))
        elif f.is_file():
            with open(f, encoding=None) as fh:  # CAPE: config.read(files), locale encoding
                cp.read_file(fh, source=str(f))
    out: dict[str, dict[str, object]] = {}
    for section in cp.sections():
        d: dict[str, object] = {}
        for key, value in cp.items(section):
            if key.startswith("env:"):
                continue
            v: object
            try:
                if value in {"0", "1"}:
                    raise ValueError
                v = cp.getboolean(section, key)
            except ValueError:
                try:
                    v = cp.getint(section, key)
                except ValueError:
                    v = cp.get(section, key)
            d[key] = v
        out[section] = d
    return out


def cape_settings(root: str | os.PathLike) -> tuple[dict[str, object] | None, str | None]:
    """``([telfhash] options as CAPE reads them or None when there is no such section, error)``;
    ``error`` is set when CAPE could not read its processing configuration at all."""
    import configparser

    r = check_root(root)
    try:
        sections = cape_read(config_files(r))
    except (configparser.Error, UnicodeDecodeError, OSError) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return sections.get("telfhash"), None


def validate(settings: Settings, *, create_index: bool = True) -> list[str]:
    """Problems with values that CAPE would accept but that cannot work; creates a missing
    index file (an empty index) when its folder is writable."""
    problems = list(settings.errors)
    if settings.index:
        p = Path(settings.index).expanduser()
        if not p.is_absolute():
            problems.append(f"index {settings.index!r}: give an absolute path (CAPE's working folder is not this one)")
        elif p.exists():
            if not p.is_file():
                problems.append(f"index {p}: not a file")
            else:
                try:
                    from telfhash_core.store.index import Index

                    with Index(str(p), create=False) as ix:
                        len(ix)
                except Exception as exc:
                    problems.append(f"index {p}: not a readable telfhash-core index ({type(exc).__name__}: {exc})")
        elif not p.parent.is_dir():
            problems.append(f"index {p}: neither the file nor its folder {p.parent} exists")
        elif not os.access(p.parent, os.W_OK):
            problems.append(f"index {p}: does not exist and {p.parent} is not writable")
        elif create_index:
            try:
                from telfhash_core.store.index import Index

                with Index(str(p), create=True):
                    pass
            except Exception as exc:
                problems.append(f"index {p}: cannot create it ({type(exc).__name__}: {exc})")
    return problems


def install(
    root: str | os.PathLike, settings: Settings | None = None, *, overwrite_config: bool = False, ui: bool = False
) -> list[str]:
    """Write both files (and with ``ui`` the UI patches); returns what was done, line by line.
    Raises InstallError (having written nothing) when a file that is not ours is in the way,
    a value cannot work, or CAPE could not read the configuration that would result."""
    import configparser

    r = check_root(root)
    mod, conf = r / MODULE_REL, r / CONFIG_REL
    sm, sc = state(mod), state(conf)
    foreign = [str(s.path) for s in (sm, sc) if s.state == "foreign"]
    if foreign:
        raise InstallError(
            "refusing to overwrite files not written by telfhash-cape: "
            + ", ".join(foreign)
            + " (move them away first)"
        )
    write_conf = sc.state == "missing" or overwrite_config
    settings = settings or Settings()
    text = config_text(settings) if write_conf else None
    if write_conf:
        assert text is not None
        # what CAPE will read back from exactly this text, alone and with all its other files
        try:
            alone = cape_read([conf], {conf: text}).get("telfhash") or {}
            back = Settings.from_options(alone)
        except (configparser.Error, UnicodeDecodeError) as exc:
            raise InstallError(f"the [telfhash] section would not be readable by CAPE ({exc})") from None
        if back.to_dict() != settings.to_dict() or back.errors:
            raise InstallError(f"CAPE would read different settings back ({back.to_dict()}); nothing written")
        files = config_files(r)
        if conf not in files:
            files.append(conf)
        try:
            cape_read(files, {conf: text})
        except (configparser.Error, UnicodeDecodeError) as exc:
            raise InstallError(
                f"CAPE cannot read its processing configuration even now: {exc}; nothing written"
            ) from None
        problems = validate(settings)
        if problems:
            raise InstallError("; ".join(problems) + "; nothing written")
    if ui:
        from . import ui as ui_mod

        try:
            ui_done = ui_mod.apply(r)
        except ui_mod.UIError as exc:
            raise InstallError(str(exc)) from None
    done = []
    _write(mod, MODULE_TEXT)
    done.append(f"{'updated' if sm.state != 'missing' else 'wrote'} {mod}")
    if write_conf and text is not None:
        _write(conf, text)
        done.append(f"{'rewrote' if sc.state != 'missing' else 'wrote'} {conf}")
    else:
        done.append(f"kept {conf} (existing settings; --overwrite-config replaces it)")
    if ui:
        done.extend(ui_done)
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
    confd = r / CONFIG_REL.parent
    try:
        if confd.is_dir() and not any(confd.iterdir()):
            confd.rmdir()
            done.append(f"removed the empty folder {confd}")
    except OSError:
        pass
    from . import ui as ui_mod

    if (
        any(st in ("applied", "edited") for _, st in ui_mod.status(r))
        or (r / ui_mod.PANEL_REL).exists()
        or (r / ui_mod.SERVICES_REL).exists()
    ):
        d, rf = ui_mod.revert(r)
        done.extend(d)
        refused.extend(rf)
    _drop_cache(r)
    return done, refused


def status(root: str | os.PathLike) -> dict:
    """Both files' states, the settings CAPE would read from our drop-in, and whether this
    Python can import the code the module delegates to."""
    r = check_root(root)
    sm = state(r / MODULE_REL, MODULE_TEXT)
    sc = state(r / CONFIG_REL)
    out: dict = {"module": sm, "config": sc, "other_sections": []}
    options, error = cape_settings(r)
    if error:
        out["settings_error"] = error
    elif options is not None:
        out["settings"] = Settings.from_options(options)
    from . import env, ui

    out["environment"] = env.check()
    out["ui"] = ui.status(r)
    # a [telfhash] section elsewhere overrides or duplicates ours, depending on read order
    for cand in (
        r / "conf/processing.conf",
        r / "custom/conf/processing.conf",
        *sorted((r / "conf/processing.conf.d").glob("*.conf")),
        *sorted((r / CONFIG_REL.parent).glob("*.conf")),
    ):
        if cand == r / CONFIG_REL or not cand.is_file():
            continue
        try:
            if any(line.strip().lower() == "[telfhash]" for line in cand.read_text(errors="replace").splitlines()):
                out["other_sections"].append(str(cand))
        except OSError:
            pass
    return out
