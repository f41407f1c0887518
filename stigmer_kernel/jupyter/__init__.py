"""Jupyter integration on the client side: kernelspecs and the kernelspec launcher.

The broker side (the five Jupyter channels of a kernel) lives in ``stigmer_kernel.broker.jupyter``.
"""
