"""Subcommands of the ``mixbits`` command line, one module each."""
