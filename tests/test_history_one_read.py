"""A history read is one transaction: ``HistoryStore.get`` / ``list`` read the runs and their newest corrections
together (issue 21: the store's storage job; the summary keys come from :mod:`core.correction_summary`)."""

from __future__ import annotations

import sqlalchemy as sa

from core.history import HistoryStore, corrections, utc_now


def _correct(store: HistoryStore, run_id: int, versions: int) -> None:
    def insert(connection):
        for version in range(1, versions + 1):
            connection.execute(sa.insert(corrections).values(run_id=run_id, version=version, timestamp=utc_now(),
                                                             author="a", kind="class", class_index=version))

    store.write(insert, "test")


def test_get_and_list_read_runs_and_corrections_in_one_transaction(tmp_path):
    store = HistoryStore(tmp_path / "history.sqlite3")
    corrected, plain = store.add_many([{"img_name": "a.png"}, {"img_name": "b.png"}])
    _correct(store, corrected, versions=2)
    begins: list[int] = []
    sa.event.listen(store._engine_here(), "begin", lambda _connection: begins.append(1))
    row = store.get(corrected)
    assert len(begins) == 1
    assert row is not None and row["corrected"] is True and row["correction_version"] == 2
    assert row["correction"]["class_index"] == 2 and row["corrected_prediction"] == 2
    begins.clear()
    rows = store.list()
    assert len(begins) == 1
    assert [r["id"] for r in rows] == [plain, corrected]
    assert "corrected" not in rows[0] and rows[1]["correction_version"] == 2 and "correction" not in rows[1]
    store.close()
