"""Errors users can act on. Each names what is wrong (file, field, value)."""


class DlorError(Exception):
    """Base class: the CLI prints these without a traceback and exits non-zero."""

    exit_code = 1


class SpecError(DlorError, ValueError):
    """A study file is invalid: message names the YAML path and the allowed values."""

    exit_code = 2


class DataError(DlorError, ValueError):
    """Input data is unusable: message names the file and the column."""

    exit_code = 2


class BudgetError(DlorError, ValueError):
    """No structure of a family fits a parameter budget within tolerance."""

    exit_code = 2


class FitError(DlorError, ValueError):
    """A scaling-law fit cannot be made from the given points."""
