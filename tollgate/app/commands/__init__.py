"""The commands of `tollgate`, one module per area; tollgate/app/cli.py builds the parser from their tables."""
