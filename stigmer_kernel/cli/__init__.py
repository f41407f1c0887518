"""The ``stigmer`` command-line interface."""
