"""What portwatch shows of a scan: the terminal report, the JSON document, the Prometheus collector.

Every module here turns :mod:`portwatch.model` data into text or metric
families; none reads the kernel or runs a scan. It may import ``model`` and
``config`` types, never ``collect``, ``scan``, ``daemon`` or ``web``.
"""
