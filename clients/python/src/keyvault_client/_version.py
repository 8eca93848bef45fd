"""The distribution's version, read by setuptools at build time (pyproject.toml) and sent in the
User-Agent header."""

__version__ = "0.1.0"
