"""History archives carry the correction loop (issue 26): ``corrections.jsonl`` and the corrected masks travel with
``history export`` and come back on ``import`` under the runs' new ids; a hostile corrections part refuses the whole
archive (nothing committed, no file left)."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import recorded_run

from core import backup
from core.corrections import Corrections, mask_png
from core.errors import ArchiveError, UUSICError
from core.history import HistoryStore
from core.service import AnalysisService
from core.settings import Settings

SEG = {"img_path_relative": "segmentation/DDTI/imgs/seg_0.png", "task": "segmentation", "dataset_name": "DDTI",
       "organ": "Thyroid", "pixel_spacing_mm": 0.5}
CLS = {"img_path_relative": "classification/BUSI/imgs/cls_0.png", "task": "classification", "dataset_name": "BUSI",
       "organ": "Breast"}
KEPT = ("version", "timestamp", "author", "kind", "class_index", "model_class", "reason", "pixels_added",
        "pixels_removed", "dice", "area_px", "area_mm2", "measurements")


@pytest.fixture()
def source(tiny_settings: Settings) -> AnalysisService:
    return AnalysisService(tiny_settings.model_copy(update={"backend": "torch"}))


@pytest.fixture()
def archive(source: AnalysisService, tmp_path: Path) -> tuple[Path, dict]:
    return make_archive(source, tmp_path)


def make_archive(source: AnalysisService, tmp_path: Path) -> tuple[Path, dict]:
    """An export of three runs: a segmentation corrected twice, a classification overridden, one uncorrected."""
    fixes = Corrections(source.settings, source.store)
    seg = recorded_run(source.settings, source.store, SEG, "a.png")
    model = fixes.model_mask(fixes.run(seg))
    drawn = model.copy()
    drawn[0:6, 0:6] = True
    fixes.correct_mask(seg, mask_png(model), author="dr a")
    fixes.correct_mask(seg, mask_png(drawn), author="dr b", reason="missed the rim")
    cls = recorded_run(source.settings, source.store, CLS, "b.png")
    fixes.correct_class(cls, {"class_index": 1, "reason": "biopsy"})
    recorded_run(source.settings, source.store, SEG, "c.png")
    out = tmp_path / "history.tar.gz"
    manifest = backup.export_archive(source.settings, source.store, out)
    return out, {"seg": seg, "cls": cls, "drawn": drawn, "manifest": manifest}


def _fresh(tiny_settings: Settings, tmp_path: Path, name: str = "fresh") -> tuple[Settings, HistoryStore]:
    settings = tiny_settings.with_(workspace=tmp_path / name)
    settings.ensure_workspace()
    return settings, HistoryStore(settings.history_db)


def test_round_trip_keeps_versions_and_mask_bytes(source, archive, tiny_settings, history_target, tmp_path):
    """Exported from SQLite, imported into a fresh workspace on each backend (SQLite, PostgreSQL)."""
    path, made = archive
    counts = made["manifest"]["counts"]
    assert counts["corrections"] == 3 and counts["correction_files"] == 2 and counts["corrections_missing_file"] == 0
    url = history_target if isinstance(history_target, str) else f"sqlite:///{history_target}"
    settings = tiny_settings.with_(workspace=tmp_path / "fresh", history_url=url)
    settings.ensure_workspace()
    with HistoryStore(history_target) as store:
        store.add({"img_name": "already-here.png", "source": "cli"})  # new ids differ from the archived ones
        report = backup.import_archive(settings, store, path)
        assert report["runs_imported"] == 3 and report["corrections_imported"] == 3
        ids = report["ids"]
        assert ids[made["seg"]] != made["seg"]
        here, there = Corrections(settings, store), Corrections(source.settings, source.store)
        for old in (made["seg"], made["cls"]):
            before, after = there.versions(old), here.versions(ids[old])
            assert [{k: v[k] for k in KEPT} for v in after] == [{k: v[k] for k in KEPT} for v in before]
            assert all(v["run_id"] == ids[old] for v in after)
        versions = here.versions(ids[made["seg"]])
        assert [v["mask_path"] for v in versions] == [f"corrections/{ids[made['seg']]}/v{n}.png" for n in (1, 2)]
        for old, new in zip(there.versions(made["seg"]), versions, strict=True):
            assert (Path(settings.workspace) / new["mask_path"]).read_bytes() == \
                (Path(source.settings.workspace) / old["mask_path"]).read_bytes()
        np.testing.assert_array_equal(here.mask_of(versions[-1]), made["drawn"])
        assert store.get(ids[made["cls"]])["corrected_prediction"] == there.versions(made["cls"])[0]["class_index"]
        again = backup.import_archive(settings, store, path)  # twice: nothing more
        assert again["runs_imported"] == 0 and again["corrections_imported"] == 0
        assert len(here.versions(ids[made["seg"]])) == 2


def test_a_missing_mask_file_is_left_out_of_the_export_and_counted(source, archive, tmp_path):
    _, made = archive
    (Path(source.settings.workspace) / f"corrections/{made['seg']}/v1.png").unlink()
    manifest = backup.export_archive(source.settings, source.store, tmp_path / "again.tar.gz")
    assert manifest["counts"]["corrections"] == 2 and manifest["counts"]["corrections_missing_file"] == 1


# ------------------------------------------------------------------------------------------ hostile archives
def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def _pack(members: dict[str, bytes], target: Path) -> Path:
    """A .tar.gz of ``members`` with the manifest's digests and counts made to match (the attacker's best)."""
    manifest = json.loads(members.pop("manifest.json"))
    manifest["sha256"] = {name: hashlib.sha256(data).hexdigest() for name, data in members.items()}
    manifest["counts"]["corrections"] = len(members.get("corrections.jsonl", b"").splitlines())
    with tarfile.open(target, "w:gz") as tar:
        for name, data in [*members.items(), ("manifest.json", json.dumps(manifest).encode())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return target


def _lines(members: dict[str, bytes]) -> list[dict]:
    return [json.loads(line) for line in members["corrections.jsonl"].splitlines()]


def _with_lines(members: dict[str, bytes], rows: list) -> dict[str, bytes]:
    text = b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)
    return {**members, "corrections.jsonl": text}


def _spoil_run(members: dict[str, bytes], made: dict) -> dict[str, bytes]:
    rows = _lines(members)
    rows[-1]["run_id"] = 424242  # a class correction of a run the archive does not hold
    return _with_lines(members, rows)


def _steal_mask(members: dict[str, bytes], made: dict) -> dict[str, bytes]:
    rows = _lines(members)  # the classification run's row claims the segmentation run's mask
    cls_row = next(r for r in rows if r["kind"] == "class")
    cls_row.update(kind="mask", mask_path=f"corrections/{made['seg']}/v1.png")
    return _with_lines(members, rows)


def _drop_mask(members: dict[str, bytes], made: dict) -> dict[str, bytes]:
    return {k: v for k, v in members.items() if k != f"corrections/{made['seg']}/v2.png"}


def _huge_mask(members: dict[str, bytes], made: dict) -> dict[str, bytes]:
    name = f"corrections/{made['seg']}/v2.png"  # a small file whose header says 30000 x 30000 px
    data = members[name]
    return {**members, name: data[:16] + struct.pack(">II", 30000, 30000) + data[24:]}


def _not_png(members: dict[str, bytes], made: dict) -> dict[str, bytes]:
    return {**members, f"corrections/{made['seg']}/v2.png": b"#!/bin/sh\nrm -rf /\n"}


def _bad_json(members: dict[str, bytes], made: dict) -> dict[str, bytes]:
    return _with_lines(members, [*_lines(members), b'{"run_id": 1, "version": 9,'])


def _bad_measurements(members: dict[str, bytes], made: dict) -> dict[str, bytes]:
    rows = _lines(members)
    rows[0]["measurements"] = "{not json"
    return _with_lines(members, rows)


def _wrong_types(members: dict[str, bytes], made: dict) -> dict[str, bytes]:
    rows = _lines(members)
    rows[0].update(version="1", kind="paint", dice=7.5)
    return _with_lines(members, rows)


def _twice(members: dict[str, bytes], made: dict) -> dict[str, bytes]:
    rows = _lines(members)
    return _with_lines(members, [*rows, rows[0]])


def _stray_member(members: dict[str, bytes], made: dict) -> dict[str, bytes]:
    return {**members, f"corrections/{made['seg']}/v7.png": members[f"corrections/{made['seg']}/v1.png"]}


def _escape_name(members: dict[str, bytes], made: dict) -> dict[str, bytes]:
    return {**members, "corrections/../api_out/evil.png": b"x"}


def _unknown_column(members: dict[str, bytes], made: dict) -> dict[str, bytes]:
    rows = _lines(members)
    rows[0]["path_on_server"] = "/etc/passwd"
    return _with_lines(members, rows)


HOSTILE = {
    "run not in the archive": (_spoil_run, "is not in this archive"),
    "another run's mask": (_steal_mask, "not a mask of its own run"),
    "mask missing": (_drop_mask, "missing from the archive"),
    "mask over the pixel budget": (_huge_mask, "30000x30000"),
    "mask not a PNG": (_not_png, "not a PNG"),
    "row is bad JSON": (_bad_json, "corrections.jsonl line 4"),
    "measurements bad JSON": (_bad_measurements, "measurements"),
    "wrong types": (_wrong_types, "version"),
    "version twice": (_twice, "appears twice"),
    "mask no row names": (_stray_member, "not named by any correction"),
    "escaping member name": (_escape_name, "not a safe relative path"),
    "unknown column": (_unknown_column, "path_on_server"),
}


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
def test_hostile_corrections_refuse_the_whole_archive(archive, tiny_settings, tmp_path, case):
    path, made = archive
    spoil, expected = HOSTILE[case]
    bad = _pack(spoil(_members(path), made), tmp_path / "bad.tar.gz")
    settings, store = _fresh(tiny_settings, tmp_path)
    with store:
        with pytest.raises(ArchiveError) as refused:
            backup.import_archive(settings, store, bad)
        message = refused.value.message
        assert "nothing was imported" in message and expected in message, message
        assert str(tiny_settings.workspace) not in message
        assert store.list() == []  # nothing committed
    assert not (Path(settings.workspace) / "corrections").exists() or \
        not any((Path(settings.workspace) / "corrections").rglob("*"))


def test_oversized_mask_member_is_refused_at_its_header(archive, tiny_settings, tmp_path):
    path, made = archive
    members = _members(path)
    members[f"corrections/{made['seg']}/v2.png"] = b"\0" * ((1 << 20) + 1)
    bad = _pack(members, tmp_path / "big.tar.gz")
    settings, store = _fresh(tiny_settings, tmp_path)
    settings = settings.with_(max_upload_mb=1)
    with store, pytest.raises(ArchiveError, match="over its limit"):
        backup.import_archive(settings, store, bad)


def test_a_failed_commit_leaves_no_mask_file(archive, tiny_settings, tmp_path, monkeypatch):
    path, _ = archive
    settings, store = _fresh(tiny_settings, tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr("core.archive_corrections.insert_rows", broken)
    with store:
        with pytest.raises(Exception):  # noqa: B017 - whatever the store makes of it
            backup.import_archive(settings, store, path)
        assert store.list() == []
    assert not any((Path(settings.workspace) / "corrections").rglob("*.png"))


def test_the_command_line_refuses_a_hostile_archive_in_one_line(archive, tiny_settings, tmp_path, monkeypatch,
                                                                capsys):
    from core.cli import main

    path, made = archive
    bad = _pack(_spoil_run(_members(path), made), tmp_path / "bad.tar.gz")
    monkeypatch.setenv("UUSIC_WORKSPACE", str(tmp_path / "cli"))
    assert main(["history", "import", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "424242" in err and "\n" not in err


def test_the_command_line_carries_the_corrections(archive, tiny_settings, tmp_path, monkeypatch, capsys):
    from core.cli import main

    path, _ = archive
    monkeypatch.setenv("UUSIC_WORKSPACE", str(tmp_path / "moved"))
    monkeypatch.delenv("UUSIC_HISTORY_URL", raising=False)
    assert main(["history", "import", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "runs imported: 3," in printed and "corrections imported: 3," in printed
    out = tmp_path / "again.tar.gz"
    assert main(["history", "export", "--out", str(out)]) == 0
    assert "3 corrections" in capsys.readouterr().out
    assert backup.read_manifest(out)["counts"]["correction_files"] == 2  # the manifest reader reads format 2


def test_a_format_1_archive_without_corrections_still_imports(archive, tiny_settings, tmp_path):
    path, _ = archive
    members = {k: v for k, v in _members(path).items() if k != "corrections.jsonl" and not k.startswith("corrections/")}
    manifest = json.loads(members["manifest.json"])
    manifest["format_version"] = 1
    for key in ("corrections", "correction_files", "corrections_missing_file"):
        manifest["counts"].pop(key)
    members["manifest.json"] = json.dumps(manifest).encode()
    old = _pack(members, tmp_path / "v1.tar.gz")
    settings, store = _fresh(tiny_settings, tmp_path)
    with store:
        report = backup.import_archive(settings, store, old)
        assert report["runs_imported"] == 3 and report["corrections_imported"] == 0
        assert not any(row.get("corrected") for row in store.list())


def test_a_linked_corrections_folder_is_refused_and_nothing_committed(archive, tiny_settings, tmp_path):
    path, _ = archive
    settings, store = _fresh(tiny_settings, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (Path(settings.workspace) / "corrections").symlink_to(outside, target_is_directory=True)
    with store:
        with pytest.raises(UUSICError, match="leads out of the workspace"):
            backup.import_archive(settings, store, path)
        assert store.list() == []
    assert not any(outside.rglob("*"))
