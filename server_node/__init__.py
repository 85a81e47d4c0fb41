"""Server node daemon: hosts partitions and runs them (``splitinfer-server``)."""
