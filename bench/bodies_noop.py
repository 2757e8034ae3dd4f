"""A body that does nothing and imports nothing: the fixed cost of a budgeted task."""


def noop() -> None:
    """Nothing."""
