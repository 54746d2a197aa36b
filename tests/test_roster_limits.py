"""Roster files over the size limits (storage.filelimits): refused early, naming file and limit.

The zip bomb is built by streaming: one compressed copy of a 1 MiB chunk is repeated in the deflate
stream, so a ~2 MB file expands to 2 GiB without the test holding more than a megabyte of it.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import openpyxl
import pytest

from bot.core.errors import RosterError
from storage.filelimits import ROSTER_LIMITS, Limits, check_xlsx
from storage.roster import read_roster
from tests.test_roster import STUDENT_HEADER, write_csv

ROOT = Path(__file__).resolve().parents[1]
MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
SHEET = "xl/worksheets/sheet1.xml"
GIB = 1 << 30


# ---------------------------------------------------------------------------- building archives
def _deflate(segments: Sequence[tuple[bytes, int]]) -> tuple[bytes, int, int]:
    """A raw deflate stream of each (chunk, times) in turn: (stream, crc32, uncompressed size).

    Each chunk is compressed once and ended with a full flush (no back-references across it), so
    its compressed copy can simply be repeated.
    """
    out = io.BytesIO()
    crc = size = 0
    for chunk, times in segments:
        packer = zlib.compressobj(9, zlib.DEFLATED, -15)
        block = packer.compress(chunk) + packer.flush(zlib.Z_FULL_FLUSH)
        for _ in range(times):
            out.write(block)
            crc = zlib.crc32(chunk, crc)
        size += len(chunk) * times
    out.write(zlib.compressobj(9, zlib.DEFLATED, -15).flush())  # the final, empty block
    return out.getvalue(), crc, size


def _write_zip(path: Path, members: Sequence[tuple[str, bytes, int, int, int]]) -> Path:
    """A zip of (name, deflate stream, crc32, uncompressed size as declared, its size)."""
    directory = b""
    with path.open("wb") as f:
        for name, data, crc, declared, _ in members:
            raw = name.encode()
            offset = f.tell()
            fields = (20, 0, 8, 0, 0x21, crc, len(data), declared, len(raw), 0)
            f.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", *fields) + raw + data)
            directory += (
                struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, *fields, 0, 0, 0, 0, offset) + raw
            )
        start = f.tell()
        f.write(directory)
        count = len(members)
        f.write(
            struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, len(directory), start, 0)
        )
    return path


def _base_members(title: str = "学生") -> list[tuple[str, bytes]]:
    """The parts of a real one-sheet workbook (openpyxl's), the sheet named `title`."""
    book = openpyxl.Workbook()
    book.active.title = title
    book.active.append(STUDENT_HEADER)
    buffer = io.BytesIO()
    book.save(buffer)
    with zipfile.ZipFile(buffer) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def _xlsx(path: Path, sheet: Sequence[tuple[bytes, int]], *, declared: int | None = None) -> Path:
    """A workbook whose sheet XML is `sheet` (chunks repeated), other parts from openpyxl."""
    members = []
    for name, content in _base_members():
        segments = sheet if name == SHEET else [(content, 1)]
        data, crc, size = _deflate(segments)
        stated = declared if declared is not None and name == SHEET else size
        members.append((name, data, crc, stated, size))
    return _write_zip(path, members)


def _sheet(
    rows: bytes, times: int = 1, *, before: bytes = b"", after: bytes = b""
) -> list[tuple[bytes, int]]:
    head = f'<worksheet xmlns="{MAIN}">'.encode() + before + b"<sheetData>"
    return [(head, 1), (rows, times), (b"</sheetData>" + after + b"</worksheet>", 1)]


def _bomb(path: Path, *, declared: int | None = None) -> Path:
    """~2 MB of workbook whose sheet XML is 2 GiB of rows."""
    row = b'<row><c t="inlineStr"><is><t>S1</t></is></c></row>'
    chunk = row * ((1 << 20) // len(row))
    return _xlsx(path, _sheet(chunk, (2 * GIB) // len(chunk)), declared=declared)


# ---------------------------------------------------------------------------- the zip bomb
_MEASURE = textwrap.dedent(
    """
    import json, resource, subprocess, sys
    def cap():  # should the check fail, the machine keeps its memory
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    done = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=120,
                          preexec_fn=cap, stdin=subprocess.DEVNULL)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB, this child alone
    print(json.dumps({"rc": done.returncode, "stderr": done.stderr, "peak_kib": peak}))
    """
)


def _measure(env: dict[str, str], cwd: Path, *args: str) -> dict[str, object]:
    """Run `python -m bot ARGS` under a fresh wrapper process; its exit code, stderr, peak RSS."""
    wrapper = subprocess.run(
        [sys.executable, "-c", _MEASURE, sys.executable, "-m", "bot", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert wrapper.returncode == 0, wrapper.stderr
    result: dict[str, object] = json.loads(wrapper.stdout)
    return result


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    from tests.procs import bot_env

    return bot_env(DATABASE_URL=f"sqlite:///{tmp_path / 'hv.db'}")


def test_zip_bomb_is_refused_by_the_cli_in_little_memory(
    env: dict[str, str], tmp_path: Path
) -> None:
    bomb = _bomb(tmp_path / "roster.xlsx")
    assert bomb.stat().st_size < 8_000_000  # well within the 32 MB a file may have
    with zipfile.ZipFile(bomb) as archive:
        assert archive.getinfo(SHEET).file_size > 2 * GIB - (1 << 20)

    started = time.monotonic()
    result = _measure(env, tmp_path, "roster", "import", "--dry-run", str(bomb))

    assert result["rc"] == 1
    [line] = str(result["stderr"]).splitlines()
    assert line == (
        f"homevisit: roster.xlsx: {SHEET} 解压后超过 100 MB / "
        f"{SHEET} uncompressed is larger than 100 MB"
    )
    peak_mb = int(str(result["peak_kib"])) / 1024
    assert peak_mb < 150, f"peak RSS {peak_mb:.0f} MB"
    assert time.monotonic() - started < 60


def test_a_bomb_whose_directory_understates_its_size_is_refused_while_reading(
    tmp_path: Path,
) -> None:
    # The central directory claims 50 MB: within the limits, so only reading can tell.
    bomb = _bomb(tmp_path / "liar.xlsx", declared=50_000_000)
    started = time.monotonic()

    with pytest.raises(RosterError) as err:
        read_roster([bomb])

    assert err.value.problems == [f"liar.xlsx[{SHEET}]: 超过 50000 行 / more than 50000 rows"]
    assert time.monotonic() - started < 30


# ---------------------------------------------------------------------------- CSV files
def _students(count: int) -> list[list[str]]:
    return [[f"S{i}", "学生", "一小", "一班", "", "T1", ""] for i in range(count)]


def test_a_csv_at_the_row_limit_is_read_and_one_row_more_is_refused(tmp_path: Path) -> None:
    rows = _students(ROSTER_LIMITS.rows)
    assert len(read_roster([write_csv(tmp_path / "students.csv", STUDENT_HEADER, rows)]).students)

    write_csv(tmp_path / "students.csv", STUDENT_HEADER, [*rows, ["S-last", *rows[0][1:]]])
    with pytest.raises(RosterError) as err:
        read_roster([tmp_path / "students.csv"])

    assert err.value.problems == ["students.csv: 超过 50000 行 / more than 50000 rows"]


def test_csv_data_beyond_the_column_limit_is_refused(tmp_path: Path) -> None:
    header = STUDENT_HEADER + [f"备注{i}" for i in range(57)] + ["第65列"]
    assert len(header) == 65
    rows = [_students(1)[0] + [""] * 57 + ["x"]]

    with pytest.raises(RosterError) as err:
        read_roster([write_csv(tmp_path / "students.csv", header, rows)])

    assert err.value.problems == [
        "students.csv: 第1行: 第 64 列之后还有数据 / row 1 has data beyond column 64"
    ]


def test_csv_trailing_empty_columns_do_not_count(tmp_path: Path) -> None:
    rows = [row + [""] * 200 for row in _students(3)]
    path = write_csv(tmp_path / "students.csv", STUDENT_HEADER, rows)
    assert len(read_roster([path]).students) == 3


def test_a_csv_with_more_cells_than_the_limit_is_refused(tmp_path: Path) -> None:
    header = STUDENT_HEADER + [f"备注{i}" for i in range(53)]  # 60 columns
    rows = [row + ["x"] * 53 for row in _students(ROSTER_LIMITS.cells // 50)]  # 58 filled

    with pytest.raises(RosterError) as err:
        read_roster([write_csv(tmp_path / "students.csv", header, rows)])

    assert err.value.problems == ["students.csv: 超过 1000000 个单元格 / more than 1000000 cells"]


def test_a_csv_file_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "students.csv"
    with path.open("wb") as f:
        f.truncate(ROSTER_LIMITS.file_bytes + 1)  # sparse: costs no disk

    with pytest.raises(RosterError) as err:
        read_roster([path])

    assert err.value.problems == ["students.csv: 文件超过 32 MB / file larger than 32 MB"]


def test_a_csv_line_longer_than_any_roster_line_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "students.csv"
    path.write_text(",".join(STUDENT_HEADER) + "\n" + "x" * 70_000 + "\n", encoding="utf-8")

    with pytest.raises(RosterError) as err:
        read_roster([path])

    assert err.value.problems == [
        "students.csv: 第2行: 超过 64000 个字符 / line 2 is longer than 64000 characters"
    ]


# ---------------------------------------------------------------------------- .xlsx structure
HEADER_ROW = (
    "<row>"
    + "".join(f'<c t="inlineStr"><is><t>{h}</t></is></c>' for h in STUDENT_HEADER)
    + "</row>"
).encode()
STUDENT_ROW = (
    "<row>"
    + "".join(f'<c t="inlineStr"><is><t>{v}</t></is></c>' for v in _students(1)[0])
    + "</row>"
).encode()


def _refusal(path: Path) -> list[str]:
    with pytest.raises(RosterError) as err:
        read_roster([path])
    return err.value.problems


def test_an_xlsx_sheet_at_the_row_limit_passes_and_one_row_more_is_refused(
    tmp_path: Path,
) -> None:
    at_limit = _xlsx(tmp_path / "r.xlsx", _sheet(HEADER_ROW + STUDENT_ROW * ROSTER_LIMITS.rows))
    check_xlsx("r.xlsx", at_limit.read_bytes())

    book = _xlsx(tmp_path / "r.xlsx", _sheet(HEADER_ROW + STUDENT_ROW * (ROSTER_LIMITS.rows + 1)))
    assert _refusal(book) == [f"r.xlsx[{SHEET}]: 超过 50000 行 / more than 50000 rows"]


def test_a_far_row_number_is_refused_without_reading_the_rows_between(tmp_path: Path) -> None:
    book = _xlsx(tmp_path / "far.xlsx", _sheet(HEADER_ROW + b'<row r="1048576"/>'))
    assert _refusal(book) == [f"far.xlsx[{SHEET}]: 超过 50000 行 / more than 50000 rows"]


def test_a_value_beyond_the_column_limit_is_refused(tmp_path: Path) -> None:
    far = b'<row><c r="BM2" t="inlineStr"><is><t>x</t></is></c></row>'  # column 65
    book = _xlsx(tmp_path / "wide.xlsx", _sheet(HEADER_ROW + far))
    assert _refusal(book) == [
        f"wide.xlsx[{SHEET}]: 第2行: 第 64 列之后还有数据 / row 2 has data beyond column 64"
    ]


def test_empty_formatted_cells_beyond_the_column_limit_are_ignored(tmp_path: Path) -> None:
    styled = STUDENT_ROW.replace(b"</row>", b'<c r="XFD2" s="1"/></row>')
    book = _xlsx(tmp_path / "styled.xlsx", _sheet(HEADER_ROW + styled))
    assert [s.student_no for s in read_roster([book]).students] == ["S0"]


def test_a_row_with_more_cells_than_excel_has_columns_is_refused(tmp_path: Path) -> None:
    book = _xlsx(
        tmp_path / "row.xlsx", _sheet(HEADER_ROW + b"<row>" + b"<c/>" * 16_385 + b"</row>")
    )
    assert _refusal(book) == [
        f"row.xlsx[{SHEET}]: 第2行: 超过 16384 个单元格 / row 2 has more than 16384 cells"
    ]


def test_more_cells_than_the_limit_are_refused(tmp_path: Path) -> None:
    row = b"<row>" + b"<c/>" * 100 + b"</row>"
    book = _xlsx(tmp_path / "cells.xlsx", _sheet(HEADER_ROW + row * (ROSTER_LIMITS.cells // 100)))
    assert _refusal(book) == ["cells.xlsx: 超过 1000000 个单元格 / more than 1000000 cells"]


def test_elements_openpyxl_would_keep_are_limited(tmp_path: Path) -> None:
    junk = b"<x/>" * (ROSTER_LIMITS.elements + 1)
    book = _xlsx(tmp_path / "junk.xlsx", _sheet(HEADER_ROW, after=junk))
    assert _refusal(book) == [
        f"junk.xlsx: {SHEET} 结构过于复杂（超过 200000 个元素）/ "
        f"{SHEET} is too complex (more than 200000 elements)"
    ]


def test_a_sheet_that_openpyxl_would_parse_whole_is_refused(tmp_path: Path) -> None:
    members = []
    for name, content in _base_members():
        if name == "xl/styles.xml":  # parsed whole: a big "sheet" here would all be kept
            content = b"".join(part * times for part, times in _sheet(HEADER_ROW * 10))
        data, crc, size = _deflate([(content, 1)])
        members.append((name, data, crc, size, size))
    book = _write_zip(tmp_path / "odd.xlsx", members)
    assert _refusal(book) == [
        "odd.xlsx: 无法读取（inconsistent parts）/ cannot read the file (inconsistent parts)"
    ]


def test_a_sheet_declaring_entities_is_refused(tmp_path: Path) -> None:
    laughs = b'<!DOCTYPE worksheet [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>'
    book = _xlsx(tmp_path / "dtd.xlsx", [(laughs, 1), *_sheet(HEADER_ROW + b"<row/>" * 3)])
    # Not scanned: openpyxl's parser (defusedxml) refuses the part before reading an element.
    assert _refusal(book) == ["dtd.xlsx: 无法读取（ValueError）/ cannot read the file (ValueError)"]


def test_too_many_members_are_refused_before_the_directory_is_read(tmp_path: Path) -> None:
    path = tmp_path / "many.xlsx"
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(ROSTER_LIMITS.members + 1):
            archive.writestr(f"m{i}", b"")
    assert _refusal(path) == [
        "many.xlsx: 压缩包内文件超过 1000 个 / more than 1000 files inside the archive"
    ]


def test_check_xlsx_takes_other_limits_for_other_callers(tmp_path: Path) -> None:
    book = _xlsx(tmp_path / "upload.xlsx", _sheet(HEADER_ROW + STUDENT_ROW * 3))
    data = book.read_bytes()
    check_xlsx("upload.xlsx", data)

    with pytest.raises(RosterError) as err:
        check_xlsx("upload.xlsx", data, Limits(rows=2))
    assert err.value.problems == [f"upload.xlsx[{SHEET}]: 超过 2 行 / more than 2 rows"]
