"""Stopping a run cleanly on a signal: Ctrl-C (SIGINT), or SIGTERM, which schedulers send before they kill a job
(SLURM at preemption or the time limit, Kubernetes at eviction, `kill` by default).

The first signal asks the run to finish the optimizer step, write a resumable state and stop; a second one stops at
once. Under several processes (DDP) every process must stop after the same step: one that went on would wait in the
next gradient all-reduce for a peer that had left, and the state would mix two steps. So the processes agree at each
step on whether any of them got a signal (`signal_on_any_process`), which also stops them together when a scheduler
signals only some, or the launcher only relays to some.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

import torch

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def catch_stop_signals(on_first: Callable[[int], None], got_one: Callable[[], bool]) -> Callable[[], None]:
    """Route SIGINT and SIGTERM to `on_first(signum)`, or raise KeyboardInterrupt once `got_one()` (a second signal);
    returns the function that puts the previous handlers back. Only the main thread may set handlers: from another
    thread (a notebook's worker) nothing is caught and the signals act as before."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}

    def handler(signum, frame):
        if got_one():
            raise KeyboardInterrupt
        on_first(signum)

    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)

    def restore() -> None:
        for signum, earlier in previous.items():
            signal.signal(signum, earlier)

    return restore


def signal_on_any_process(signum: int | None) -> int | None:
    """The stop signal any process got (the highest number where they differ), or None: one tiny all-reduce when a
    process group of several is running, else `signum` itself. Every process must call it at the same point."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return signum
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    value = torch.tensor([signum or 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value.item()) or None


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name
