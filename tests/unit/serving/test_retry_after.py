"""Retry-After of a full queue (JobQueue._retry_after_seconds) against its closed form: the
running job's measured seconds per unit of progress x what is left of it; before the job has
measured itself, the queue's seconds per image-step x the job's image-steps left; clamped to
[1, 600]. The state is set by hand, so no timing is measured or asserted."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from pictor.serving.batching import GenerationRequest
from pictor.serving.jobs import Job, JobQueue
from pictor.serving.settings import ServeSettings


@pytest.fixture
def queue() -> JobQueue:
    # the estimator reads no pipeline; JobQueue only sets two cache attributes on it
    return JobQueue(SimpleNamespace(), ServeSettings())


def running(queue: JobQueue, *jobs: Job) -> int:
    with queue._lock:
        queue._running[:] = jobs
        return queue._retry_after_seconds()


def job(num_images: int, num_steps: int, progress: float,
        seconds_per_progress: float | None = None) -> Job:
    j = Job(id="j", request=GenerationRequest("a red circle", num_images=num_images,
                                              num_steps=num_steps))
    j.progress, j.seconds_per_progress = progress, seconds_per_progress
    return j


def test_a_measured_job_is_its_rate_times_what_is_left(queue):
    assert running(queue, job(2, 50, 0.25, seconds_per_progress=40.0)) == math.ceil(40 * 0.75)
    assert running(queue, job(2, 50, 0.999, seconds_per_progress=40.0)) == 1  # 0.04 s -> 1


def test_before_it_measures_itself_the_queue_rate_counts_image_steps(queue):
    queue.seconds_per_image_step = 0.0625  # exact in binary
    # 3 images x 32 steps x 0.0625 s x (1 - 0.5) = 3 s; the steps count, not only the images
    assert running(queue, job(3, 32, 0.5)) == 3
    assert running(queue, job(3, 320, 0.5)) == 30


def test_the_longest_running_job_decides_and_the_bounds_hold(queue):
    queue.seconds_per_image_step = 0.0625  # exact in binary
    assert running(queue, job(1, 20, 0.0), job(2, 50, 0.0, seconds_per_progress=12.0)) == 12
    assert running(queue, job(1, 10, 0.0, seconds_per_progress=1e6)) == 600
    assert running(queue) == 1  # nothing running: the next slot is a worker pass away
    queue.seconds_per_image_step = None  # no batch measured yet
    assert running(queue, job(4, 50, 0.0)) == 1
