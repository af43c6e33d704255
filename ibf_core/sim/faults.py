"""What the loopback simulators (IB Gateway, Alpha Vantage) share: fault sets, their switchboard, serving."""

from __future__ import annotations

import dataclasses
import signal
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

F = TypeVar("F", bound="FaultSet")


class FaultSet:
    """Mixin for a frozen dataclass of faults: ``coerce`` from a mapping, ``_with`` validated changes.

    Subclasses list their countdown fields in ``COUNTERS`` and may normalize values in ``_normalize``.
    """

    COUNTERS: tuple[str, ...] = ()

    @classmethod
    def coerce(cls: type[F], value: F | Mapping[str, Any] | None) -> F:
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        return cls()._with(dict(value))

    def _normalize(self, changes: dict[str, Any]) -> dict[str, Any]:
        return changes

    def _with(self: F, changes: Mapping[str, Any]) -> F:
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"unknown fault(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        fixed = self._normalize(dict(changes))
        for counter in self.COUNTERS:
            if counter in fixed and fixed[counter] is not None and int(fixed[counter]) < 0:
                raise ValueError(f"{counter} must be >= 0")
        return dataclasses.replace(self, **fixed)


def parse_fault_specs(cls: type[F], specs: Iterable[str]) -> F:
    """Faults from command-line ``name=value`` strings, converted by each field's annotated type
    (``none``/``never`` is None where the field allows it; set-like fields stay strings for ``_normalize``)."""
    types = {f.name: str(f.type).replace(" ", "") for f in dataclasses.fields(cls)}
    changes: dict[str, Any] = {}
    for spec in specs:
        name, sep, raw = spec.partition("=")
        name, raw = name.strip(), raw.strip()
        if not sep or name not in types:
            raise ValueError(f"fault {spec!r}: use name=value with a name among {', '.join(types)}")
        kind = types[name]
        optional = kind.endswith("|None")
        base = kind.removesuffix("|None")
        try:
            if optional and raw.lower() in ("", "none", "never"):
                changes[name] = None
            elif base == "bool":
                changes[name] = raw.lower() in ("1", "true", "yes", "on")
            elif base == "int":
                changes[name] = int(raw)
            elif base == "float":
                changes[name] = float(raw)
            else:
                changes[name] = raw
        except ValueError:
            raise ValueError(f"fault {spec!r}: {raw!r} is not a valid value for {name}") from None
    return cls.coerce(changes)


class FaultSwitchboard:
    """Mixin for a simulator holding ``self._lock`` and ``self._faults``: thread-safe reads, changes and countdowns."""

    _fault_type: type[FaultSet]
    _lock: Any
    _faults: Any

    @property
    def faults(self) -> Any:
        with self._lock:
            return self._faults

    def set_faults(self, faults: Any = None, **changes: Any) -> Any:
        """Replace the faults (``set_faults(Faults(...))``) or change some (``set_faults(name=value)``)."""
        with self._lock:
            base = faults if faults is not None else self._faults
            self._faults = base._with(changes) if changes else base
            self._faults_changed()
            return self._faults

    def _faults_changed(self) -> None:
        """Hook called under the lock after every change."""

    def clear_faults(self) -> None:
        self.set_faults(self._fault_type())

    def _take(self, counter: str) -> bool:
        """Consume one unit of a counting fault; False when none is left."""
        with self._lock:
            left = getattr(self._faults, counter)
            if left <= 0:
                return False
            self._faults = dataclasses.replace(self._faults, **{counter: left - 1})
            return True


def serve_until_stopped(
    sim: Any,
    name: str,
    describe: Callable[[], str],
    announce: Callable[[str], None],
    stop_event: threading.Event | None = None,
) -> None:
    """Run a simulator in the foreground until Ctrl-C, SIGTERM (``docker stop``) or ``stop_event``."""
    stop_event = stop_event or threading.Event()
    restore_sigterm = None
    if threading.current_thread() is threading.main_thread():
        restore_sigterm = signal.signal(signal.SIGTERM, lambda *_: stop_event.set())
    try:
        sim.start()
        announce(f"{name} listening on {describe()}; Ctrl-C stops it")
        while not stop_event.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        announce(f"stopping the {name}")
        sim.stop()
        if restore_sigterm is not None:
            signal.signal(signal.SIGTERM, restore_sigterm)
