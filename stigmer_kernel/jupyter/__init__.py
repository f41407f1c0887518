"""Jupyter integration on the client side: kernelspecs and the kernelspec launcher.

The broker side lives in ``stigmer_kernel.broker.jupyter_channels`` (the five Jupyter channels of
a kernel) and ``stigmer_kernel.broker.jupyter`` (the handlers of what arrives on them).
"""
