"""`python -m tunelab`: the `tunelab` command (how `study run --workers N` starts its worker processes)."""

from tunelab.cli import main

main()
