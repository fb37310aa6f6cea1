"""kill -9 during hot-add, replace and rollback: after each restart the repository is consistent,
every task serves its old or its new version, and nothing acknowledged is lost.

A short run of bench/crash_loop.py (its checks are the assertions); docs/reliability.md has the
figures of the long one.
"""

from __future__ import annotations

from bench.crash_loop import crash_loop


def test_kill_9_at_random_moments_during_head_changes_never_leaves_a_broken_task(
    built_repo, tmp_path
):
    result = crash_loop(built_repo, kills=5, seed=7, max_delay=0.5, workdir=tmp_path)
    print(result)
    assert sum(result["acknowledged"].values()) > 0
    assert result["kills"] == 5
