"""On-device agent: runs head/tail partitions and streams the rest to servers (``splitinfer-agent``)."""
