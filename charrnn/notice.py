"""The notice that keeps a first run from looking hung. Its own module, free of Rich, so that
`charrnn sample` does not import Rich on the way to its first character."""

import threading
from typing import Callable


class SlowNotice:
    """Says `text` through `say` (a line on stderr), once, if a piece of work inside it takes
    longer than `after` seconds: the first run compiles the kernels, and a silent minute would
    look hung. It may be entered again for the next piece of the same work."""

    def __init__(self, say: Callable[[str], None], text: str, after: float = 1.5):
        self._say_line, self._text, self._after = say, text, after
        self._said = False
        self._timer = None

    def _say(self):
        self._said = True
        self._say_line(self._text)

    def __enter__(self):
        if not self._said:
            self._timer = threading.Timer(self._after, self._say)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc):
        if self._timer is not None:
            self._timer.cancel()

    cancel = __exit__
