"""Subcommands of the ``splitinfer`` command line."""
