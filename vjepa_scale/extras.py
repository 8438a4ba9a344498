"""Optional dependencies (setup.py's extras): `require_extra` names the one to install when it is missing."""
from __future__ import annotations

import importlib.util


class MissingExtraError(ModuleNotFoundError):
    """An optional dependency is not installed; the message names the `pip install` that adds it."""


def require_extra(module: str, extra: str, what: str) -> None:
    """MissingExtraError unless `module` can be imported: `what` (a task) needs setup.py's extra `extra`."""
    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(f"{what} needs {module}, which is not installed: pip install -c constraints.txt "
                                f"-e '.[{extra}]' (or pip install 'vjepa-scale[{extra}]')", name=module)
