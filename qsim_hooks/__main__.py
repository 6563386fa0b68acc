"""``python -m qsim_hooks``: the same command line as the ``qsim-hooks`` script."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
