"""Python code generated from ``proto/splitinfer/v1`` by ``make proto`` (git-ignored; never edit)."""
