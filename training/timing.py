"""`timers` may be None in the original's functions: then timing does nothing."""

from common.timers import Timer, Timers


class _NullTimer:
    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def timer_or_null(timers: Timers | None, name: str) -> "Timer | _NullTimer":
    """`timers(name)`, or a timer that does nothing when `timers` is None."""
    return timers(name) if timers is not None else _NullTimer()
