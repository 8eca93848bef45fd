"""Unlocking the deployment with its master key (verified against the database before anything
is written) and rotating it: rewrapping records sealed under a retired key.
"""
