"""Stopping a run cleanly on a signal: Ctrl-C (SIGINT), or SIGTERM, which schedulers send before they kill a job
(SLURM at preemption or the time limit, Kubernetes at eviction, `kill` by default).

The first signal asks the run to finish the optimizer step, write a resumable state and stop. A second Ctrl-C stops
at once; a repeated SIGTERM is ignored, because one stop can deliver several (SLURM signals every process of the
job step, and torchrun's agent relays its own SIGTERM to the workers) and the scheduler's SIGKILL follows anyway.

Under several processes (DDP) every process must stop after the same training step: one that went on would wait in
the next gradient all-reduce for a peer that had left, and the state would mix two steps. So at each step the
processes agree on whether any of them got a signal (`signal_on_any_process`), and all of them wait until rank 0
has written the state (`wait_for_every_process`) before they exit: a launcher stops the other workers as soon as
one has exited. The agreement runs over a gloo group of CPU tensors, so it adds no GPU synchronisation to a step.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

import torch

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_cpu_groups: dict[int, object] = {}  # id of the default process group -> its gloo twin, made once


def catch_stop_signals(on_first: Callable[[int], None]) -> Callable[[], None]:
    """Route this process's first SIGINT or SIGTERM to `on_first(signum)`; a later SIGINT raises KeyboardInterrupt and a
    later SIGTERM is ignored. Returns the function that puts the previous handlers back. Only the main thread may set
    handlers: from another thread (a notebook's worker) nothing is caught and the signals act as before."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    received: list[int] = []  # this process's own signals, not those agreed on with other processes

    def handler(signum, frame):
        if received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not received:
            on_first(signum)
        received.append(signum)

    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)

    def restore() -> None:
        for signum, earlier in previous.items():  # None: a handler not set from Python, which cannot be put back
            signal.signal(signum, signal.SIG_DFL if earlier is None else earlier)

    return restore


def _cpu_group():
    """A gloo group over the running process group, or None when there is no group of several processes."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    if dist.get_backend() == "gloo":
        return dist.group.WORLD
    key = id(dist.group.WORLD)
    if key not in _cpu_groups:  # every process gets here at the same call: new_group is itself collective
        # torch's default timeout, 30 min, as the Trainer's default ddp_timeout: the others wait here while rank 0
        # alone writes a task's checkpoint and the next task's start state
        _cpu_groups[key] = dist.new_group(backend="gloo")
    return _cpu_groups[key]


def signal_on_any_process(signum: int | None) -> int | None:
    """The stop signal any process got (the highest number where they differ), or None; `signum` itself when no group
    of several processes is running. Every process must call it at the same point."""
    group = _cpu_group()
    if group is None:
        return signum
    import torch.distributed as dist

    value = torch.tensor([signum or 0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=group)
    return int(value.item()) or None


def wait_for_every_process() -> None:
    """Return once every process of the group has called this (at once without a group of several)."""
    group = _cpu_group()
    if group is not None:
        import torch.distributed as dist

        dist.barrier(group=group)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name
