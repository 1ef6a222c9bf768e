"""User-facing errors: mistakes in configs or inputs, reported without a deep stack trace."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix (a config key, an input file); the message says what and where."""


class InputError(UserError, ValueError):
    """An input file that cannot be read as its format at all (row-level problems are quarantined)."""


def find_user_error(exc: BaseException) -> UserError | None:
    """The UserError behind ``exc``, unwrapping Ray's task/actor error wrappers."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        cause = getattr(current, "cause", None)  # Ray's RayTaskError(InputError) wraps the real one
        if isinstance(current, UserError) and not isinstance(cause, BaseException):
            return current
        stack += [cause, current.__cause__, current.__context__]
    return None
