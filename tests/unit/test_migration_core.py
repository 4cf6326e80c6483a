"""The migration cores as transcripts: events in, effects out (snipe/migration/core.py)."""

from __future__ import annotations

from snipe.migration.core import (
    AskTask,
    Clone,
    Commit,
    DropClone,
    Exit,
    Finish,
    Freeze,
    Origin,
    Report,
    Restore,
    Run,
    SayReady,
    SendState,
    Source,
    StartClone,
    Thaw,
)

H2 = "urn:snipe:host:h2"
P = "urn:snipe:proc:abc"


def source() -> Source:
    return Source(P, H2, clone_timeout=10, move_timeout=30)


def test_source_happy_path() -> None:
    s = source()
    assert s.start(0) == [StartClone(H2)]
    assert s.on_clone_ready(["tcp://h2:1"], 1) == [AskTask(("tcp://h2:1",))]
    assert s.deadline == 31
    assert s.on_task_report(True, None, 2) == [Finish(True)]
    assert s.state == "done"
    assert s.on_timer(100) == []                   # done is final
    assert s.on_task_report(False, "late", 3) == []


def test_source_clone_failure_drops_the_clone_and_says_why() -> None:
    s = source()
    s.start(0)
    out = s.on_clone_failed("the daemon did not answer", 1)
    assert out == [Finish(False, f"could not start a clone on {H2}: the daemon did not answer"), DropClone(H2)]
    assert s.on_clone_ready(["tcp://h2:1"], 2) == [DropClone(H2)]   # a late clone is dropped, not used


def test_source_without_endpoints_fails() -> None:
    s = source()
    s.start(0)
    out = s.on_clone_ready([], 1)
    assert s.state == "failed" and isinstance(out[0], Finish) and not out[0].ok


def test_source_times_out_a_task_that_never_reaches_a_safe_point() -> None:
    s = source()
    s.start(0)
    s.on_clone_ready(["tcp://h2:1"], 1)
    assert s.on_timer(30.9) == []
    out = s.on_timer(31)
    assert out[1] == DropClone(H2) and not out[0].ok and "safe_point" in (out[0].reason or "")
    assert s.on_task_report(True, None, 32) == []   # too late: the caller was told it failed


def test_source_task_refusal_is_reported() -> None:
    s = source()
    s.start(0)
    s.on_clone_ready(["tcp://h2:1"], 1)
    assert s.on_task_report(False, "no hook", 2) == [Finish(False, "no hook"), DropClone(H2)]


def test_origin_commits_only_on_ready() -> None:
    o = Origin(("tcp://h2:1",), ready_timeout=5)
    assert o.at_safe_point(10, asked_until=40) == [Freeze(), SendState()]
    assert o.on_timer(14.9) == []
    assert o.on_ready({"instance": "i2"}, 11) == [Commit({"instance": "i2"}), Report(True)]
    assert o.state == "committed"
    assert o.on_timer(100) == [] and o.on_refused("x", 100) == []     # nothing undoes a commit


def test_origin_thaws_when_the_clone_is_silent() -> None:
    o = Origin(("tcp://h2:1",), ready_timeout=5)
    o.at_safe_point(10, asked_until=40)
    out = o.on_timer(15)
    assert [type(e) for e in out] == [Thaw, Report] and not out[1].ok and "did not confirm" in (out[1].reason or "")
    o2 = Origin(("e",), ready_timeout=5, bytes_per_s=100)
    o2.at_safe_point(10, asked_until=40)
    o2.on_sending(1000, 11)                         # 1,000 bytes at 100 B/s: 10 s more to wait
    assert o2.deadline == 26 and o2.on_timer(25) == []
    assert o.on_ready({}, 16) == []                  # a late ready is ignored: the original goes on


def test_origin_thaws_when_refused_or_the_send_fails() -> None:
    o = Origin(("e",), ready_timeout=5)
    o.at_safe_point(0, asked_until=40)
    assert o.on_refused("bad state", 1) == [Thaw("the clone refused the state: bad state"),
                                            Report(False, "the clone refused the state: bad state")]
    o2 = Origin(("e",), ready_timeout=5)
    o2.at_safe_point(0, asked_until=40)
    assert o2.on_send_failed("cut", 1)[1] == Report(False, "could not send the state to the clone: cut")


def test_origin_refuses_a_request_that_already_expired() -> None:
    o = Origin(("e",), ready_timeout=5)
    out = o.at_safe_point(50, asked_until=40)
    assert o.state == "aborted" and out == [Report(False, "the task reached a safe point after the migration "
                                                          "had timed out")]


def test_clone_runs_only_after_commit() -> None:
    c = Clone(state_timeout=60, commit_timeout=10)
    c.start(0)
    assert c.on_commit(1) == []                      # no state yet: a commit means nothing
    assert c.on_state(2) == [Restore(), SayReady()]
    assert c.on_timer(11.9) == []
    assert c.on_commit(3) == [Run()]
    assert c.state == "running" and c.on_timer(1000) == []


def test_clone_exits_without_state_or_commit() -> None:
    c = Clone(state_timeout=60, commit_timeout=10)
    c.start(0)
    assert c.on_timer(59) == []
    out = c.on_timer(60)
    assert c.state == "gone" and isinstance(out[0], Exit) and "the state did not come" in out[0].reason
    c2 = Clone(state_timeout=60, commit_timeout=10)
    c2.start(0)
    c2.on_state(1)
    assert isinstance(c2.on_timer(11)[0], Exit) and "the commit did not come" in (c2.reason or "")
    c3 = Clone(state_timeout=60, commit_timeout=10)
    c3.start(0)
    c3.on_state(1)
    assert c3.on_abort("target slow", 2) == [Exit("the original aborted the migration: target slow")]
    assert c3.on_commit(3) == []                    # gone is final


def test_clone_refuses_a_bad_state() -> None:
    c = Clone(state_timeout=60, commit_timeout=10)
    c.start(0)
    assert c.on_bad_state("sizes overrun", 1) == [Exit("sizes overrun")]
    assert c.on_state(2) == []
