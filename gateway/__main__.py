"""`python -m gateway` is the same as the `sms311` console script."""

from gateway.cli import main

raise SystemExit(main())
