"""Carrying a client operation's steps out in a test, with no socket (sam2_service.client.ops)."""

from __future__ import annotations

from typing import Any, Callable

from sam2_service.client.ops import Run, Send, Steps, Work


def drive(steps: Steps, answer: Callable[[dict], dict]) -> tuple[Any, list[dict]]:
    """Carry ``steps`` out as a transport would: Work inline, each Send answered by
    ``answer(message)``. Returns (result, the messages sent)."""
    sent = []
    run = Run(steps)
    while not run.done:
        if isinstance(run.step, Send):
            sent.append(run.step.message)
            run.send(answer(run.step.message))
        else:
            assert isinstance(run.step, Work)
            run.send(run.step.run())
    return run.result, sent
