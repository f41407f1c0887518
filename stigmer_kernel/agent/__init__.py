"""Execution agents: the processes that run user commands in warm bash sessions."""
