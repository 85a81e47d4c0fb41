"""Python code generated from ``proto/splitinfer/inference`` (the Open Inference Protocol) by ``make proto``."""
