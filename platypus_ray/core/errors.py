"""User-facing errors: mistakes in configs or inputs, reported without a deep stack trace."""

from __future__ import annotations

import errno


class UserError(Exception):
    """Something the user can fix (a config key, an input file); the message says what and where."""


class InputError(UserError, ValueError):
    """An input file that cannot be read as its format at all (row-level problems are quarantined)."""


class InvariantError(RuntimeError):
    """An internal invariant failed (a bug, not the user's input): the run stops before it writes
    output. Raised by :func:`require`, which, unlike ``assert``, ``python -O`` keeps."""


def require(condition: object, message: str) -> None:
    """Raise :class:`InvariantError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise InvariantError(message)


class EnvironmentFailure(UserError):
    """The machine, not the input: a full disk, a folder that cannot be written (an unreachable URI is an
    InputError, paths.unreachable: refine's read tasks report those per file)."""


# errno -> what the user can do about it; other OSErrors are bugs or unexpected, and keep their traceback
_ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "free space there, or write to another disk",
    errno.EDQUOT: "free space within your quota, or write to another disk",
    errno.EROFS: "that filesystem is read-only; choose a folder you can write",
    errno.EACCES: "choose a folder you can write, or fix its permissions",
    errno.EPERM: "choose a folder you can write, or fix its permissions",
}


def describe_os_error(exc: OSError, path: str | None = None) -> str | None:
    """One line for an OSError caused by the environment (see _ENVIRONMENT_ERRNOS), else None."""
    if exc.errno is None:
        return None
    fix = _ENVIRONMENT_ERRNOS.get(exc.errno)
    if fix is None:
        return None
    where = exc.filename or path
    return f"{exc.strerror or errno.errorcode.get(exc.errno)}{f': {where!r}' if where else ''}; {fix}"


def environment_failure(exc: BaseException) -> EnvironmentFailure | None:
    """The environment failure behind ``exc`` (a driver-side OSError such as ENOSPC), if any."""
    for current in _chain(exc):
        if isinstance(current, OSError) and (line := describe_os_error(current)):
            return EnvironmentFailure(line)
    return None


def _chain(exc: BaseException):
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        cause = getattr(current, "cause", None)  # Ray's RayTaskError(X) wraps the real one
        stack += [cause if isinstance(cause, BaseException) else None, current.__cause__, current.__context__]


def find_user_error(exc: BaseException) -> UserError | None:
    """The UserError behind ``exc``, unwrapping Ray's task/actor error wrappers."""
    for current in _chain(exc):
        if isinstance(current, UserError) and not isinstance(getattr(current, "cause", None), BaseException):
            return current
    return None
