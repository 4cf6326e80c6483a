"""`snipe-console ps` shows one row per task while it migrates (the hosts' lists, as their daemons
answer `ps`, in; the rows people and scripts see, out), and keeps the rows of tasks that are not
moving as they are."""

from __future__ import annotations

from typing import Any

from snipe.console.main import one_row_per_task

H1, H2, H3 = "urn:snipe:host:h1", "urn:snipe:host:h2", "urn:snipe:host:h3"
TASK, OTHER = "urn:snipe:proc:moving", "urn:snipe:proc:staying"


def row(host: str, state: str = "running", urn: str = TASK, last_seq: int = 1, **more: Any) -> dict[str, Any]:
    return {"urn": urn, "host": host, "state": state, "events": [{"seq": last_seq, "kind": "started"}],
            "cpu_seconds": 1.5, **more}


def test_the_original_and_its_clone_are_one_task_migrating_from_its_host_to_the_target() -> None:
    staying = row(H1, urn=OTHER)
    original = row(H1, migrating_to=H2)
    clone = row(H2, clone_from=H1, cpu_seconds=0.1)
    assert one_row_per_task([staying, original, clone]) == [
        staying, {**original, "migrating": {"from": H1, "to": H2}}]


def test_a_migrating_task_keeps_its_own_state() -> None:
    """The move is said in `migrating`, not in `state`: a suspended task moving is still suspended."""
    original = row(H1, "suspended", migrating_to=H2)
    clone = row(H2, clone_from=H1)
    assert one_row_per_task([original, clone]) == [{**original, "migrating": {"from": H1, "to": H2}}]
    assert one_row_per_task([original, clone])[0]["state"] == "suspended"


def test_once_the_clone_took_over_it_is_still_one_row_until_the_original_hears_the_move_is_done() -> None:
    original = row(H1, migrating_to=H2)
    took_over = row(H2, last_seq=2)           # no clone_from any more: it runs as the task
    assert one_row_per_task([original, took_over]) == [{**original, "migrating": {"from": H1, "to": H2}}]
    moved_away = row(H1, "migrated", moved_to=H2)
    assert one_row_per_task([moved_away, took_over]) == [took_over]


def test_a_clone_whose_original_no_host_listed_is_shown_migrating_from_where_it_comes() -> None:
    clone = row(H2, clone_from=H1)
    assert one_row_per_task([clone]) == [{**clone, "host": H1, "migrating": {"from": H1, "to": H2}}]


def test_a_task_that_moved_away_and_ended_elsewhere_is_its_end_and_when_only_moves_are_listed_the_latest() -> None:
    first, second = row(H1, "migrated", last_seq=2), row(H2, "migrated", last_seq=3)
    ended = row(H3, "exited", last_seq=4)
    assert one_row_per_task([first, second, ended]) == [ended]
    assert one_row_per_task([first, second]) == [second]      # H3 did not answer


def test_copies_of_a_task_in_mode_all_are_each_a_process_and_stay() -> None:
    copies = [row(H1), row(H2), row(H3)]
    assert one_row_per_task(copies) == copies
    unreachable = {"urn": None, "host": H3, "state": "unreachable", "unreachable": "no answer"}
    assert one_row_per_task([row(H1), unreachable]) == [row(H1), unreachable]
