"""Errors labkit raises. Each names what is accepted, or the exact command that fixes it."""

from __future__ import annotations

from collections.abc import Iterable


class LabkitError(ValueError):
    """Bad input to a labkit function: the message says what is accepted."""


class MissingPackageError(ImportError):
    """An optional package is not installed: the message gives the install command."""

    def __init__(self, package: str, purpose: str, extra: str | None = None):
        command = f"pip install {package}"
        if extra:
            command += f"   (or, in the course checkout: pip install -e '.[{extra}]')"
        super().__init__(f"{purpose} needs the package '{package}', which is not installed. Install it with:\n    {command}")
        self.package = package
        self.command = command


def unknown(kind: str, value: object, accepted: Iterable[object]) -> LabkitError:
    """Build the error for a value outside a known set, listing what is accepted."""
    options = ", ".join(repr(a) for a in accepted)
    return LabkitError(f"unknown {kind} {value!r}. Accepted: {options}")


def require_positive(name: str, value: float, allow_zero: bool = False) -> None:
    """Raise LabkitError unless value is a positive number (or zero when allowed)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LabkitError(f"{name} must be a number, got {value!r}")
    if value != value:  # NaN
        raise LabkitError(f"{name} must be a number, got NaN")
    if value < 0 or (value == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "greater than zero"
        raise LabkitError(f"{name} must be {bound}, got {value!r}")


def require_tokens(name: str, value: object) -> int:
    """Raise LabkitError unless value is a whole number of tokens, 1 or more; return it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LabkitError(f"{name} must be a whole number of tokens, 1 or more; got {value!r}")
    return value


def require_count(name: str, value: object, low: int, high: int) -> int:
    """Raise LabkitError unless value is a whole number from low to high (users, requests, slots ...); return it."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise LabkitError(f"{name} must be a whole number from {low} to {high:,}, got {value!r}")
    return value
