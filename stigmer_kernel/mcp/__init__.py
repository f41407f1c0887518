"""``stigmer mcp``: a Model Context Protocol server over stigmer kernels (docs/mcp.md).

It is a client of the stigmer server, as the CLI is: the kernels it uses are the ones
``stigmer kernels list`` shows. ``bounded`` cuts output for a model; ``server`` holds the
tools; ``http`` serves them over streamable HTTP behind a bearer token.
"""
