"""Logs as one JSON object per line, written in batches per event-loop turn, and the Prometheus
metrics; neither ever holds a key, a token or a sub as a label.
"""
