"""The host's binding journal as a file: what a start takes up again, what a crash leaves."""

from __future__ import annotations

import time

from affinity.journal import BindingJournal, journal_path


def test_a_start_compacts_and_returns_only_the_bindings_still_waiting_for_the_database(tmp_path):
    journal = BindingJournal(tmp_path / "j", window_hours=1)
    journal.record({("main", "1.1"): "node-a", ("main", "1.2"): "node-b"}, pending=True)
    journal.record({("main", "1.1"): "node-a"})  # written since
    journal.record({("main", "1.3"): "node-a"}, pending=True, at=time.time() - 7200)  # past the window
    with open(tmp_path / "j", "a") as out:
        out.write("main\t1.4\tnode-b\tP\t17")  # a line a crash cut short
    pending = BindingJournal(tmp_path / "j", window_hours=1).start()
    assert {key: backend for key, (backend, _) in pending.items()} == {("main", "1.2"): "node-b"}
    assert len((tmp_path / "j").read_text().splitlines()) == 2  # 1.1 written, 1.2 pending


def test_a_lookup_sees_what_other_processes_append_after_it_first_read(tmp_path):
    mine, other = BindingJournal(tmp_path / "j", window_hours=1), BindingJournal(tmp_path / "j", window_hours=1)
    other.record({("main", "1.1"): "node-a"})
    assert mine.lookup([("main", "1.1"), ("main", "1.2")]) == {("main", "1.1"): "node-a"}
    other.record({("main", "1.2"): "node-c"})
    assert mine.lookup([("main", "1.2")]) == {("main", "1.2"): "node-c"}
    other.start()  # compaction replaces the file: the next lookup reads it afresh
    assert mine.lookup([("main", "1.1"), ("main", "1.2")]) == {("main", "1.1"): "node-a", ("main", "1.2"): "node-c"}


def test_each_database_has_its_own_journal(tmp_path):
    one = journal_path(tmp_path, {"ENGINE": "django.db.backends.postgresql", "HOST": "db1", "NAME": "synthiq"})
    two = journal_path(tmp_path, {"ENGINE": "django.db.backends.postgresql", "HOST": "db2", "NAME": "synthiq"})
    assert one != two and one.parent == tmp_path
