"""`python -m gateway` is the `kartabl` command."""

from gateway.cli import main

raise SystemExit(main())
