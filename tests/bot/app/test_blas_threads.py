"""`serve` holds numpy's BLAS at one thread: its spinning threads cost more CPU per message than
the small matrix products they speed up (measured in README, Runtime)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from bot.app.serve import limit_blas_threads


@pytest.fixture
def restored_blas() -> Iterator[None]:
    threads = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    before = max(threads, default=1)
    yield
    threadpool_limits(limits=before, user_api="blas")


def test_serving_holds_blas_at_one_thread(restored_blas: None) -> None:
    blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
    if not blas:
        pytest.skip("numpy has no BLAS thread pool here")
    limit_blas_threads()
    assert {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"} == {1}
    # numpy still computes (one thread): a neighbour search as the detector does it.
    bank = np.eye(4, dtype=np.float32)
    assert int(np.argmax(bank @ np.array([0, 0, 1, 0], dtype=np.float32))) == 2
