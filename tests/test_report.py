"""The notice shown while a first run compiles: only when the work is slow, and only once."""

import time

from charrnn.notice import SlowNotice


def test_the_slow_notice_says_its_text_once_and_only_when_slow():
    said = []
    notice = SlowNotice(said.append, "compiling", after=0.05)
    with notice:
        pass  # fast: nothing said
    time.sleep(0.1)
    assert said == []
    with notice:
        time.sleep(0.2)  # slow: said
    with notice:
        time.sleep(0.2)  # the same work going on: not said again
    assert said == ["compiling"]
