"""Run a function right after a module is first imported in the guest.  NOT imported on the host.

The session's set-up happens before the user's first cell, but numpy or scikit-learn may never
be imported: importing them up front would cost every session.  A meta path finder wraps the
module's loader instead, so the set-up runs once, when (and if) the module is imported.
"""

import sys

_HOOKS = {}


class _AfterImport:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        hook = _HOOKS.get(name)
        if hook is None:
            return None
        for finder in sys.meta_path:
            if finder is cls or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _Loader(spec.loader, hook)
                return spec
        return None


class _Loader:
    def __init__(self, loader, hook):
        self._loader, self._hook = loader, hook

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        self._hook(module)


def register(name, hook):
    """Call ``hook(module)`` once ``name`` is imported (now, if it already is)."""
    _HOOKS[name] = hook
    if _AfterImport not in sys.meta_path:
        sys.meta_path.insert(0, _AfterImport)
    if name in sys.modules:
        hook(sys.modules[name])
