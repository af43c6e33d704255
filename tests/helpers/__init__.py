"""Helpers shared by the test layers (``tests/`` is on pytest's ``pythonpath``: ``from helpers.bars import make_bars``).

Test modules never import each other or ``conftest``: what two test files share lives here; fixtures live in the
root ``tests/conftest.py``.
"""
