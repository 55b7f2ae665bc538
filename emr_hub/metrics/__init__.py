"""Prometheus metrics: what the operator's dashboard shows.

* :mod:`.directory` places the metric files of ``serve`` and ``worker`` processes
  (prometheus-client's multiprocess mode) before any of them is forked or spawned;
* :mod:`.definitions` declares the per-process metrics;
* :mod:`.http` records every HTTP request (a pure ASGI middleware);
* :mod:`.pool` follows a database pool's checked-out connections;
* :mod:`.database` is the registry of gauges read from the database at scrape time, which a
  feature extends with :func:`~emr_hub.metrics.database.register_database_gauge`, and
  :mod:`.gauges` the hub's own (outbox, break-the-glass);
* :mod:`.exposition` is ``GET /metrics`` and who may read it; :mod:`.worker` the Celery side.

This package imports nothing of prometheus-client here: :mod:`.directory` must be able to set
``PROMETHEUS_MULTIPROC_DIR`` before the library is first imported (it decides then, once per
process, whether samples go to memory or to files).
"""
