"""The Front-End: the device's single endpoint."""
