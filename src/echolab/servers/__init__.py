"""The echo servers: one module each, sharing the protocol, settings and metrics of the package."""
