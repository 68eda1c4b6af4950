"""`python -m charrnn` is the `charrnn` command."""

from .cli import console_main

console_main()
