"""Jobs for tests/dagster/test_executor.py: each op records the PID of the process it ran in (a reconstructable module)."""

import os

import dagster as dg

from ibf_dagster.compat import single_step_in_process_executor


def _record(name: str) -> None:
    with open(os.path.join(os.environ["IBF_TEST_PID_DIR"], name), "w") as handle:
        handle.write(str(os.getpid()))


@dg.op
def first() -> int:
    _record("first")
    return 1


@dg.op
def second(value: int) -> int:
    _record("second")
    return value + 1


@dg.job(executor_def=single_step_in_process_executor())
def one_step():
    first()


@dg.job(executor_def=single_step_in_process_executor())
def two_steps():
    second(first())
