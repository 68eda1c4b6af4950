"""`python -m charrnn` is the `charrnn` command."""

from .cli import main

main()
