"""RFC 8555 ACME client on httpx + cryptography. Knows nothing of Dagster or the config.

``transport`` owns HTTP, nonces, JWS and error mapping; ``client`` owns the protocol
flow, one method per ACME step; ``challenges`` holds the solvers.
"""
