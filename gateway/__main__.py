"""`python -m gateway` is the `kartabl` command."""

from gateway.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
