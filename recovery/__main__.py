"""``python -m recovery``: the same command line as the ``recovery`` console script."""

from recovery.cli import main

if __name__ == "__main__":
    main(prog_name="recovery")
