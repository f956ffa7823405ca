"""Policies from outside the package: ``--policy-file path.py`` and the ``ats_stress.policies`` entry points.

A plug-in file is plain Python that subclasses ``ats_stress.iommu_actor.policy.Policy``; every
subclass it defines with a ``name`` is registered (the file need not call ``register``). Entry
points in the group ``ats_stress.policies`` name a Policy subclass (``pkg.mod:MyPolicy``) or a
module whose subclasses are registered the same way. ``origin(name)`` says where a policy came from.

Ray workers get a plug-in file's source with each task (``PluginSource``) and register it with
``ensure``, so a policy file on the driver's disk reaches a cluster whose nodes never saw it.
"""

from __future__ import annotations

import hashlib
import sys
import traceback
import types
from dataclasses import dataclass
from pathlib import Path

from ats_stress.iommu_actor.policy import POLICIES, Policy, PolicyError, policy_names, register

ENTRY_POINT_GROUP = "ats_stress.policies"
MAX_SOURCE_BYTES = 1024 * 1024

#: policy name -> where it came from (absent: built in)
ORIGINS: dict[str, str] = {}
_loaded: dict[str, list[str]] = {}  # source digest -> the names its file registered
PLUGIN_FILES: set[str] = set()  # the source files of the registered plug-in policies (for error_text)
_entry_points_done = False


class PluginError(Exception):
    """A plug-in that cannot be used. The message is one paragraph for a person."""


@dataclass(frozen=True)
class PluginSource:
    """A policy file as shipped to a worker: where it was read, and its text."""

    path: str
    text: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def origin(name: str) -> str:
    return ORIGINS.get(name, "built-in")


def read_source(path: str | Path) -> PluginSource:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise PluginError(f"--policy-file {p}: no such file. Give the path of a Python file that defines a "
                          "Policy subclass (see examples/policies/ and README, \"Plug-in policies\").") from None
    except IsADirectoryError:
        raise PluginError(f"--policy-file {p}: is a directory, not a Python file.") from None
    except OSError as exc:
        raise PluginError(f"--policy-file {p}: cannot be read ({exc.strerror}).") from None
    if len(raw) > MAX_SOURCE_BYTES:
        raise PluginError(f"--policy-file {p}: {len(raw)} bytes is too large for a policy (limit {MAX_SOURCE_BYTES}).")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PluginError(f"--policy-file {p}: is not UTF-8 text; a policy file is Python source.") from None
    return PluginSource(str(p.resolve()), text)


def _subclasses(module: types.ModuleType) -> list[type[Policy]]:
    """The named Policy subclasses the module itself defines (not the ones it imports)."""
    return [obj for obj in vars(module).values()
            if isinstance(obj, type) and issubclass(obj, Policy) and obj.__module__ == module.__name__ and obj.name]


def _check_names(classes: list[type[Policy]], where: str) -> None:
    seen: dict[str, str] = {}
    for cls in classes:
        if cls.name in seen:
            raise PluginError(f"{where}: classes {seen[cls.name]} and {cls.__name__} both take the policy name "
                              f"{cls.name!r}; give each its own name.")
        seen[cls.name] = cls.__name__
        taken = POLICIES.get(cls.name)
        if taken is not None and taken is not cls:
            raise PluginError(f"{where}: policy {cls.name!r} (class {cls.__name__}) collides with the policy of "
                              f"that name from {origin(cls.name)} ({taken.__module__}.{taken.__name__}); rename it "
                              f"(known policies: {', '.join(policy_names())}).")


def _register_all(classes: list[type[Policy]], where: str) -> list[str]:
    _check_names(classes, where)
    for cls in classes:
        register(cls)
        ORIGINS[cls.name] = where
        source = getattr(sys.modules.get(cls.__module__), "__file__", None)
        if source:
            PLUGIN_FILES.add(source)
    return [cls.name for cls in classes]


def error_text(exc: BaseException) -> str:
    """``Type: message`` of an error that ended a run, and, when it was raised inside a plug-in's
    own code, the file, line and function there (the innermost such frame): what report.md and the
    terminal say, so that the plug-in's author need not ask for a traceback."""
    text = f"{type(exc).__name__}: {exc}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename in PLUGIN_FILES]
    if frames:
        f = frames[-1]
        text += f" (raised at {f.filename}:{f.lineno}, in {f.name}())"
    return text


def register_source(src: PluginSource) -> list[str]:
    """Execute a policy file as its own module and register its policies (once per digest)."""
    digest = src.digest
    if digest in _loaded:
        return _loaded[digest]
    policy_names()  # the built-ins first, so a collision with one is seen
    name = f"ats_stress_plugin_{Path(src.path).stem.replace('-', '_')}_{digest[:12]}"
    module = types.ModuleType(name)
    module.__file__ = src.path
    sys.modules[name] = module  # dataclasses and pickling look their module up by name
    try:
        code = compile(src.text, src.path, "exec")
        exec(code, module.__dict__)
    except SyntaxError as exc:
        del sys.modules[name]
        raise PluginError(f"--policy-file {src.path}: is not valid Python at line {exc.lineno}: {exc.msg}.") from None
    except PolicyError as exc:  # the file called register() itself and it collided
        del sys.modules[name]
        raise PluginError(f"--policy-file {src.path}: {exc}; rename the policy.") from None
    except Exception as exc:
        del sys.modules[name]
        raise PluginError(f"--policy-file {src.path}: running it raised {type(exc).__name__}: {exc}.") from None
    classes = _subclasses(module)
    try:
        if not classes:
            raise PluginError(f"--policy-file {src.path}: defines no Policy subclass with a name. A policy file "
                              "subclasses ats_stress.iommu_actor.policy.Policy and sets name, summary, Params "
                              "and handle() (see examples/policies/ and README, \"Plug-in policies\").")
        names = _register_all(classes, src.path)
    except PluginError:
        del sys.modules[name]
        raise
    _loaded[digest] = names
    return names


def load_entry_points() -> list[str]:
    """Register every policy of the ``ats_stress.policies`` entry-point group (once per process)."""
    global _entry_points_done
    if _entry_points_done:
        return [n for n, o in ORIGINS.items() if o.startswith("entry point")]
    from importlib.metadata import entry_points

    policy_names()
    names: list[str] = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = getattr(ep, "dist", None)
        where = f"entry point {ep.name} = {ep.value}" + (f" ({dist.name} {dist.version})" if dist else "")
        try:
            obj = ep.load()
        except Exception as exc:
            raise PluginError(f"{where}: cannot be loaded ({type(exc).__name__}: {exc}). Fix or uninstall the "
                              f"package that declares it in the {ENTRY_POINT_GROUP} group.") from None
        if isinstance(obj, types.ModuleType):
            classes = _subclasses(obj)
        elif isinstance(obj, type) and issubclass(obj, Policy) and obj.name:
            classes = [obj]
        else:
            classes = []
        if not classes:
            raise PluginError(f"{where}: names neither a Policy subclass with a name nor a module defining one.")
        names += _register_all(classes, where)
    _entry_points_done = True
    return names


def load(files: list[Path] | tuple = ()) -> tuple[PluginSource, ...]:
    """The CLI's one call: entry points, then each --policy-file. Returns the sources to ship to workers."""
    load_entry_points()
    sources = tuple(read_source(f) for f in files)
    for src in sources:
        register_source(src)
    return sources


def ensure(sources: tuple[PluginSource, ...] | list) -> None:
    """On a worker: the same policies as the driver (idempotent; cheap after the first task)."""
    load_entry_points()
    for src in sources:
        register_source(src)
