"""portwatch: catch the failures caused by the Linux ephemeral port range."""

__version__ = "0.1.0"
