"""Member names and kinds: the list settings and the model config validate against, importing nothing.

The built-in members' kinds are declared here so reading a setting never imports the members (and through them
the model code); ``members.register`` adds a user's member, and a test holds this table to the classes.
"""

from __future__ import annotations

# name: (trained, neural) of the members ``members.py`` defines, in their registration order
BUILTIN_MEMBERS: dict[str, tuple[bool, bool]] = {
    "naive": (False, False),
    "drift": (False, False),
    "lstm": (True, True),
    "tft": (True, True),
    "gbdt": (True, False),
    "gbdt_rank": (True, False),
    "reversal_1": (True, False),
    "reversal_5": (True, False),
    "momentum_20": (True, False),
    "momentum_12_1": (True, False),
}

_KINDS: dict[str, tuple[bool, bool]] = dict(BUILTIN_MEMBERS)


def add(name: str, trained: bool, neural: bool) -> None:
    _KINDS[name] = (trained, neural)


def remove(name: str) -> None:
    _KINDS.pop(name, None)


def kinds() -> dict[str, tuple[bool, bool]]:
    """Every known member name -> (trained, neural), in registration order."""
    return dict(_KINDS)


def trained_members() -> tuple[str, ...]:
    return tuple(n for n, (trained, _) in _KINDS.items() if trained)


def baseline_members() -> tuple[str, ...]:
    return tuple(n for n, (trained, _) in _KINDS.items() if not trained)


def neural_members() -> tuple[str, ...]:
    return tuple(n for n, (_, neural) in _KINDS.items() if neural)
