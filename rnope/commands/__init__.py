"""One module per ``rnope`` subcommand (see :mod:`rnope.cli`)."""
