"""The Result Store: durable, queryable results of every request."""

from splitinfer.results.store import ResultQuery, ResultStore

__all__ = ["ResultQuery", "ResultStore"]
