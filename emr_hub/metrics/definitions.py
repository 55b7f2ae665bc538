"""The metrics each process records (HTTP requests, Celery tasks); summed over the processes
of a ``serve`` or a ``worker`` at scrape time.

Label values are bounded: route templates, methods, statuses, Organizations of API clients,
task names. Never a resource id, a name or a CCCD.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds, from a cached read (a millisecond) to the longest requests (a large Bundle)."""
TASK_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
"""Seconds, from an empty outbox relay to a large export."""

HTTP_REQUESTS = Counter(
    "emr_hub_http_requests",
    "HTTP requests answered, by route template, method, status and the client's Organization",
    ["route", "method", "status", "organization"],
)
HTTP_LATENCY = Histogram(
    "emr_hub_http_request_duration_seconds",
    "Time from a request's arrival to the end of its answer, by route template and method",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
)
TASKS = Counter(
    "emr_hub_tasks",
    "Celery tasks run, by task name and outcome (the task's final state, lower case)",
    ["task", "outcome"],
)
TASK_DURATION = Histogram(
    "emr_hub_task_duration_seconds",
    "Time a Celery task ran, by task name",
    ["task"],
    buckets=TASK_BUCKETS,
)
