"""What portwatch shows of a scan: the terminal report, the JSON document, the sysctl snippet, the metrics, the status texts.

Every module here turns :mod:`portwatch.model` data into text or metric
families; none reads the kernel or runs a scan:

- :mod:`.report`: the terminal report (``portwatch scan``);
- :mod:`.json`: the JSON document, ``schema`` 1 (``portwatch scan --format json``);
- :mod:`.reserve`: the sysctl.d snippet (``portwatch reserve``);
- :mod:`.metrics`: the Prometheus collector (``/metrics``);
- :mod:`.status`: systemd's ``STATUS=`` line and the HTML index page.

The package may import ``model`` and ``config`` types (and prometheus_client),
never ``collect``, ``scan``, ``daemon`` or ``web``.
"""
