"""kill -9 during hot-add, replace, rollback and shadow changes (shadow, promote, discard): after
each restart the repository is consistent,
every task serves its old or its new version, and nothing acknowledged is lost.

A short run of support/crash_loop.py (bench/crash_loop.py runs it long); the assertions are on
what each restart showed (its ``Restart`` records). docs/reliability.md has the figures of the long
one.
"""

from __future__ import annotations

import signal

from support.crash_loop import crash_loop

KILLS = 5


def test_kill_9_at_random_moments_during_head_changes_never_leaves_a_broken_task(
    built_repo, tmp_path
):
    result = crash_loop(built_repo, kills=KILLS, seed=7, max_delay=0.5, workdir=tmp_path)
    restarts = result.pop("restarts")
    print(result)
    for i, restart in enumerate(restarts):
        # Consistent: every pointer names a readable, complete version, and exactly those serve.
        assert restart.broken == [], (i, restart)
        assert restart.served == restart.pointers, (i, restart)
        assert restart.shadows == restart.shadow_pointers, (i, restart)
        # Every acknowledged head serves its last acknowledged version; no version acknowledged
        # before is gone; the interrupted call's task serves its old version or the call's.
        served = {task: restart.served.get(task) for task in restart.acknowledged}
        assert served == restart.acknowledged, (i, restart)
        shadows = {task: restart.shadows.get(task) for task in restart.acknowledged_shadows}
        assert shadows == restart.acknowledged_shadows, (i, restart)
        assert restart.versions_lost == {}, (i, restart)
        if i:
            assert restart.interrupted.endswith((": old", ": new", "between calls")), restart
        # Every served task answers, and a version answers as it did after earlier restarts.
        assert restart.failed_predictions == [] and restart.outputs_changed == [], (i, restart)
        assert restart.admin_errors == [], (i, restart)
    # The kills happened: each server before a restart died of SIGKILL, not of anything else,
    # and at least one died with a call in flight.
    assert len(restarts) == KILLS + 1
    assert [r.previous_exit for r in restarts] == [None] + [-signal.SIGKILL] * KILLS
    assert any(r.interrupted.endswith((": old", ": new")) for r in restarts)
    # Heads changed between the kills: calls were acknowledged (and checked above).
    assert sum(result["acknowledged"].values()) > 0
