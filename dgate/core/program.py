"""Programs of component calls, and the one driver that runs them.

A program is a generator: it yields `(component, inputs)` for every model call it needs, is sent
each call's outputs back, and returns its result. The arithmetic stays in the program while the
caller decides how calls are made: `run_blocking` (PyTorch modules in the parity tests, blocking
BLS) or `run_async`, with which one Triton model instance interleaves the steps of many requests
(`await request.async_exec()`), so the denoiser's dynamic batcher sees all of them. Programs compose
with `yield from` (the image program runs the denoising loop's program between its VAE calls).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

# A call's inputs or outputs by name: numpy arrays or torch tensors on the program's device
# (dgate.core.device); whoever makes the call converts at its boundary.
Arrays = dict[str, Any]
Call = tuple[str, Arrays]  # (component, inputs)
T = TypeVar("T")
Program = Generator[Call, Arrays, T]
AsyncComponentCall = Callable[[str, Arrays], Awaitable[Arrays]]


@dataclass(frozen=True)
class Done(Generic[T]):
    """A program that has returned: its result."""

    value: T


def advance(program: Program[T], answer: Arrays | None = None) -> Call | Done[T]:
    """Send the program its last call's outputs (None: start it); its next call, or its result."""
    try:
        return next(program) if answer is None else program.send(answer)
    except StopIteration as done:
        return Done(done.value)


def run_blocking(program: Program[T], call: Callable[[str, Arrays], Arrays]) -> T:
    step = advance(program)
    while not isinstance(step, Done):
        step = advance(program, call(*step))
    return step.value


async def run_async(program: Program[T], call: AsyncComponentCall) -> T:
    step = advance(program)
    while not isinstance(step, Done):
        step = advance(program, await call(*step))
    return step.value
