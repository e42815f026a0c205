"""One exception type for every user-facing failure (bad file, bad input, missing dependency).

The CLIs catch `CCFastError`, print its message and exit with a non-zero code; anything else is a bug
and keeps its traceback.
"""


class CCFastError(ValueError):
    """A problem with the user's input, files or environment, with a message that says what to do."""


class MissingDependencyError(CCFastError, ImportError):
    """An optional dependency (an extra) is not installed."""


def require(module: str, extra: str, purpose: str):
    """Import `module` or raise a `MissingDependencyError` naming the pip extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            f"{purpose} needs the Python package '{module}', which is not installed "
            f"({exc}). Install it with: pip install 'ccfast[{extra}]'"
        ) from exc
