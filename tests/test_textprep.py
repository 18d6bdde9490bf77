"""TextPreparation: field extraction, masking of real log lines, truncation, serialization."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.textprep import MASKS, MissingTextError, TextPreparation, mask_text


def _line(datasets_dir: Path, rel: str, index: int) -> str:
    return (datasets_dir / rel).read_text(encoding="utf-8").splitlines()[index]


def test_bgl_line_masks_epoch_dates_node_ids_and_timestamps(datasets_dir: Path) -> None:
    line = _line(datasets_dir, "bgl_2k/BGL_2k.log", 0)
    assert line.startswith("- 1117838570 2005.06.03 R02-M1-N0-C:J12-U11 2005-06-03-15.42.50.675872")
    assert mask_text(line) == (
        "- <NUM> <TS> <NODE> <TS> <NODE> RAS KERNEL INFO instruction cache parity error corrected"
    )


def test_bgl_lines_differing_only_in_variables_prepare_identically(datasets_dir: Path) -> None:
    lines = (datasets_dir / "bgl_2k/BGL_2k.log").read_text(encoding="utf-8").splitlines()
    hummer = [ln for ln in lines if ln.endswith("double-hummer alignment exceptions")]
    assert len({ln.split(" ", 1)[1] for ln in hummer}) > 10  # the raw lines really differ
    prep = TextPreparation()
    assert {prep.prepare(ln.split(" ", 1)[1]) for ln in hummer} == {
        "<NUM> <TS> <NODE> <TS> <NODE> RAS KERNEL INFO <NUM> double-hummer alignment exceptions"
    }


def test_bgl_hex_registers_and_paths(datasets_dir: Path) -> None:
    prep = TextPreparation()
    assert (
        prep.prepare("RAS KERNEL INFO iar 001061dc dear 0244c22c") == "RAS KERNEL INFO iar <HEX> dear <HEX>"
    )
    assert prep.prepare("RAS KERNEL FATAL instruction address: 0x00004ed8") == (
        "RAS KERNEL FATAL instruction address: <HEX>"
    )
    lines = (datasets_dir / "bgl_2k/BGL_2k.log").read_text(encoding="utf-8").splitlines()
    ciod = next(ln for ln in lines if "Error loading /bgl/apps/" in ln)
    assert "ciod: Error loading <PATH>: invalid or missing program image" in prep.prepare(ciod)


def test_hdfs_block_ids_ips_with_ports_and_paths(datasets_dir: Path) -> None:
    line = _line(datasets_dir, "hdfs_2k/HDFS_2k.log", 2)
    assert "10.251.73.220:50010" in line
    assert mask_text(line) == (
        "<NUM> <NUM> <NUM> INFO dfs.FSNamesystem: BLOCK* NameSystem.addStoredBlock: blockMap updated:"
        " <IP> is added to <BLK> size <NUM>"
    )
    assert mask_text(_line(datasets_dir, "hdfs_2k/HDFS_2k.log", 1)).endswith("for block <BLK> terminating")


def test_thunderbird_syslog_timestamps_pids_paths_keep_host_names(datasets_dir: Path) -> None:
    line = _line(datasets_dir, "thunderbird_2k/Thunderbird_2k.log", 2)
    assert mask_text(line) == (
        "- <NUM> <TS> dn228 <TS> dn228/dn228 crond[<NUM>]: (root) CMD (run-parts <PATH>)"
    )


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("req 123e4567-e89b-12d3-a456-426614174000 done", "req <UUID> done"),
        ("from fe80::1 and 2001:db8::8a2e:370:7334 via ::1", "from <IP> and <IP> via <IP>"),
        ("std::map at 12:01:01", "std::map at <TS>"),
        ("at 2024-05-01T12:00:00.123Z and 2024-05-01 12:00:00+02:00", "at <TS> and <TS>"),
        ("mail bob.smith@example.com see https://example.com/a?b=1", "mail <EMAIL> see <URL>"),
        ("open /var/log/syslog ./conf/a.toml ~/x but and/or", "open <PATH> <PATH> <PATH> but and/or"),
        ("mac 00:1a:2b:3c:4d:5e ptr 0xDEADBEEF", "mac <HEX> ptr <HEX>"),
        ("took 12.5 ms, retry 3 of worker-7 on dn228", "took <NUM> ms, retry <NUM> of worker-<NUM> on dn228"),
        ("no variables here", "no variables here"),
    ],
)
def test_mask_table(raw: str, masked: str) -> None:
    assert mask_text(raw) == masked


def test_placeholders_survive_every_later_mask() -> None:
    placeholders = {m.placeholder for m in MASKS}
    for placeholder in placeholders:
        assert mask_text(placeholder) == placeholder


def test_mask_off_keeps_variables_but_collapses_whitespace_and_truncates() -> None:
    prep = TextPreparation(mask=False, max_chars=12)
    assert prep.prepare("  id   42\t\nat 10.0.0.1 ") == "id 42 at 10."
    assert TextPreparation(max_chars=10).prepare("id 42 at 10.0.0.1") == "id <NUM> a"
    assert TextPreparation(max_chars=9).prepare("id 42 at 10.0.0.1") == "id <NUM>"


def test_extract_joins_dotted_fields_in_order() -> None:
    prep = TextPreparation(fields=("service", "payload.msg", "payload.items.1"))
    record = {"service": "auth", "payload": {"msg": "login failed", "items": ["a", 7]}}
    assert prep.extract(record) == "auth login failed 7"
    assert prep(record) == "auth login failed <NUM>"


def test_literal_dotted_key_wins_over_path() -> None:
    assert TextPreparation(fields=("a.b",)).extract({"a.b": "flat", "a": {"b": "nested"}}) == "flat"


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"other": "x", "id": 1}, "text field 'text' is missing (fields present: id, other)"),
        ({"text": None}, "text field 'text' is null"),
        ({"text": {"nested": 1}}, "text field 'text' holds a dict, not text"),
        ({"text": True}, "text field 'text' holds a bool, not text"),
        ({"text": "   "}, "text field 'text' empty"),
    ],
)
def test_missing_or_unusable_text_is_refused(record: dict[str, object], message: str) -> None:
    with pytest.raises(MissingTextError) as info:
        TextPreparation().extract(record)
    assert str(info.value).startswith(message)
    assert isinstance(info.value, ValueError)
    assert info.value.present == sorted(record)


def test_dict_round_trip_and_unknown_keys_refused() -> None:
    prep = TextPreparation(fields=("a", "b.c"), mask=False, max_chars=300)
    assert TextPreparation.from_dict(prep.to_dict()) == prep
    assert TextPreparation.from_dict({}) == TextPreparation()
    with pytest.raises(ValueError, match="unknown text preparation keys: lowercase"):
        TextPreparation.from_dict({**prep.to_dict(), "lowercase": True})
    with pytest.raises(ValueError, match="'mask' must be true or false"):
        TextPreparation.from_dict({"mask": "yes"})


@pytest.mark.parametrize("kwargs", [{"fields": ()}, {"fields": "text"}, {"fields": ("",)}, {"max_chars": 0}])
def test_invalid_construction_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        TextPreparation(**kwargs)  # type: ignore[arg-type]
