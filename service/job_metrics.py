"""Enrolment job metrics for the gateway's /metrics: jobs by state, and enrolment duration.

Jobs run in workers, which Prometheus does not scrape; a gateway polls the job records every few
seconds instead. Reading an open record also reconciles it, so a job whose worker was killed turns
`failed` even if no one asks for it. Durations are observed once per job per gateway (each gateway
counts what it saw finish).
"""

from __future__ import annotations

import logging

from redis.exceptions import RedisError

from service.executors import ServiceLoop
from service.metrics import ENROLMENT_DURATION, JOBS
from store.job_store import STATES, JobStore

log = logging.getLogger(__name__)


class JobMetrics(ServiceLoop):
    thread_name = "iumad-job-metrics"

    def __init__(self, jobs: JobStore, interval_s: float = 5.0) -> None:
        super().__init__()
        self.jobs = jobs
        self.interval_s = interval_s
        self._finished: set[str] | None = None  # None until the first poll (old jobs are not observed)

    def poll(self) -> None:
        records = self.jobs.list(limit=1000)
        counts = dict.fromkeys(STATES, 0)
        for record in records:
            counts[record.status] = counts.get(record.status, 0) + 1
        for state, count in counts.items():
            JOBS.labels(state).set(count)
        finished = {record.id for record in records if record.finished}
        if self._finished is not None:
            for record in records:
                if record.finished and record.id not in self._finished and record.finished_at:
                    ENROLMENT_DURATION.labels(record.status).observe(
                        max(0.0, record.finished_at - record.created_at)
                    )
        self._finished = finished

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except RedisError:
                pass  # the follower already reports Redis outages
            except Exception:  # noqa: BLE001 - metrics must never take the gateway down
                log.exception("job metrics poll failed")
