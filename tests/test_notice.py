"""The compile notice speaks only while numba compiles inside it: not for slow work that compiles
nothing, not for a compile outside it, yes for a compile in another thread, and only once.

The @njit functions are defined inside each test, without cache=True, so each call compiles
afresh (a cache could never hold them). The timing tests fire numba's "numba:compile" event by
hand, so a compile lasts exactly as long as the test says."""

import subprocess
import sys
import threading
import time
from contextlib import contextmanager

from numba import njit
from numba.core import event

from charrnn.notice import COMPILE_EVENT, SlowNotice

TEXT = "compiling"


def compile_listeners() -> list:
    return list(event._registered[COMPILE_EVENT])


@contextmanager
def compiling_for(seconds: float):
    """A compilation as numba reports one, lasting `seconds`; the body runs at its end."""
    with event.trigger_event(COMPILE_EVENT, data={"dispatcher": None, "args": (),
                                                  "return_type": None}):
        time.sleep(seconds)
        yield


def test_slow_work_that_compiles_nothing_says_nothing():
    said = []
    notice = SlowNotice(said.append, TEXT, after=0.05)
    with notice:
        time.sleep(0.3)  # slow, and nothing compiles: scoring a big file with warm kernels
    time.sleep(0.1)
    assert said == []


def test_a_real_compile_inside_says_the_line_once():
    @njit
    def twice(x):
        return x + x

    said = []
    notice = SlowNotice(said.append, TEXT, after=0.0)
    with notice:
        assert twice(2) == 4  # compiles (int64)
        assert said == [TEXT]  # said while compiling, not on the way out
        assert twice(2.5) == 5.0  # compiles again (float64): not said again
    with notice:  # the next piece of the same work
        assert twice(1j) == 2j  # compiles (complex128)
    assert said == [TEXT]


def test_a_compile_outside_the_notice_says_nothing():
    @njit
    def square(x):
        return x * x

    said = []
    notice = SlowNotice(said.append, TEXT, after=0.0)
    assert square(3) == 9  # compiled before the notice
    with notice:
        assert square(4) == 16  # already compiled: nothing compiles here
    assert square(1.5) == 2.25  # compiled after it
    notice.cancel()  # leaving again is harmless
    assert said == []


def test_a_compile_in_another_thread_counts():
    @njit
    def cube(x):
        return x * x * x

    said, results = [], []
    with SlowNotice(said.append, TEXT, after=0.0):
        worker = threading.Thread(target=lambda: results.append(cube(2)))
        worker.start()
        worker.join()
    assert results == [8]
    assert said == [TEXT]


def test_the_delay_counts_from_the_first_compile_not_from_entering():
    said = []
    notice = SlowNotice(said.append, TEXT, after=0.5)
    with notice:
        time.sleep(0.7)  # past `after`, but nothing compiling: the clock has not started
        with compiling_for(0.02):  # a quick compile: done long before `after`
            pass
    time.sleep(0.6)  # a timer left running would speak here
    assert said == []

    with notice:
        with compiling_for(0.6):  # a compile still going `after` seconds after it began
            assert said == [TEXT]


def test_a_compile_after_the_delay_says_it_at_its_start():
    said = []
    with SlowNotice(said.append, TEXT, after=0.2):
        with compiling_for(0.01):  # starts the clock
            pass
        time.sleep(0.4)  # the time is up between compiles: nothing compiling, nothing said
        assert said == []
        with compiling_for(0.0):  # still compiling after the delay
            assert said == [TEXT]


def test_leaving_removes_the_listener_even_when_cancelled_or_nested():
    before = compile_listeners()
    notice = SlowNotice([].append, TEXT)
    with notice:
        with notice:  # nested: the inner exit keeps it listening
            pass
        assert len(compile_listeners()) == len(before) + 1
        notice.cancel()  # as the sampler does at its first piece
        assert compile_listeners() == before
        notice.cancel()
    assert compile_listeners() == before


def test_the_notice_module_imports_neither_numba_nor_rich():
    code = ("import sys; from charrnn.notice import SlowNotice; SlowNotice(print, 'x'); "
            "bad = [m for m in ('numba', 'rich') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
