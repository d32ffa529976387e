"""forgetless.stopping's signal rules, in this process: the first SIGINT or SIGTERM asks for a stop, a second Ctrl-C
stops at once, a repeated SIGTERM (a scheduler and a launcher relaying it) is ignored, and the previous handlers
come back. A real run stopped by either signal: tests/test_resume_kill.py; on two processes: test_multiprocess.py."""

import os
import signal

import pytest

from forgetless.stopping import catch_stop_signals


@pytest.mark.parametrize("first", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_the_first_signal_asks_a_repeated_sigterm_is_ignored_and_a_second_ctrl_c_stops_at_once(first):
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    asked: list[int] = []
    restore = catch_stop_signals(asked.append)
    try:
        try:
            os.kill(os.getpid(), first)
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
        except KeyboardInterrupt:  # caught here: pytest would take it for the user's Ctrl-C and end the session
            pytest.fail("a repeated SIGTERM stopped at once")
        assert asked == [first]  # one stop asked, by the first signal; the SIGTERMs after it changed nothing
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        restore()
    assert {signum: signal.getsignal(signum) for signum in before} == before

