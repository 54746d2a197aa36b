"""Size limits for spreadsheet files from outside: the roster import now, the console upload later.

An .xlsx file is a zip archive of XML documents, and a 2 MB archive can expand to gigabytes (a
zip bomb took `roster import --dry-run` to 2.2 GB before it was refused). So a file passes three
checks, each before the costlier step after it, and each counts for itself, because what a zip
says about its own sizes may be false:

1. `read_limited`: the file as stored, at most `Limits.file_bytes`.
2. `check_xlsx`: the archive's end record and central directory (number of members, declared
   sizes) before any member is opened; then every member is decompressed once, in chunks, its
   real bytes counted, and every XML member scanned by expat (keeping nothing) for what openpyxl
   would hold in memory: rows, cells, columns with data, the elements of one row or one part.
3. `RowLimiter`: rows and cells counted again as openpyxl (or the CSV reader) streams the rows.

A refusal is a `RosterError` naming the file and the limit; the caller imports nothing. A real
roster costs one extra decompression and one expat pass: well under a second.
"""

from __future__ import annotations

import functools
import io
import posixpath
import struct
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO, TypeVar
from xml.etree import ElementTree
from xml.parsers import expat

from defusedxml.ElementTree import fromstring as safe_fromstring

from bot.core.errors import RosterError

MB = 1_000_000
EXCEL_COLUMNS = 16_384  # Excel's own last column (XFD): no real row has more cells
_CHUNK = 1 << 20
_END_RECORD = struct.Struct("<4s4H2LH")  # zip end of central directory, before its comment
_END_SIGNATURE = b"PK\x05\x06"


@dataclass(frozen=True, slots=True)
class Limits:
    """What one roster file may hold. The defaults are sized for a real roster, with room."""

    # A county's students on aid number in the thousands, a large one's in the low tens of
    # thousands: 50,000 data rows per sheet (or CSV file) takes a whole city in one file.
    rows: int = 50_000
    # A roster has 7 columns; exports from school administration systems add a few dozen.
    columns: int = 64
    # 50,000 students × 7 columns is 350,000 cells. A million leaves room for extra columns and
    # keeps holding a file's values (~100 bytes each in Python) near 100 MB at worst.
    cells: int = 1_000_000
    # Sheet XML costs ~40 bytes a cell (<c r="AB12345" s="3" t="s"><v>123456</v></c>), so a
    # sheet at the cell limit is ~50 MB; a member may be twice that.
    member_bytes: int = 100 * MB
    # Two sheets near their limit, the shared strings and the styles fit; a 2 GiB bomb does not.
    total_bytes: int = 200 * MB
    # Sheet XML compresses about tenfold, so a workbook at the limits is ~20 MB; a CSV at the
    # cell limit ~15 MB.
    file_bytes: int = 32 * MB
    # An .xlsx has a dozen members, a few hundred with pictures.
    members: int = 1_000
    directory_bytes: int = 1 * MB
    # openpyxl builds one row, one shared string or one whole other part (styles, workbook,
    # relationships) as an element tree, and keeps some elements for the whole sheet: 200,000
    # elements (~30 MB of tree) is far more than a heavily formatted real workbook needs.
    elements: int = 200_000
    # Longer than this (64 columns of 1,000 characters), a CSV line is not a roster line.
    line_chars: int = 64_000


ROSTER_LIMITS = Limits()

UNREADABLE = "无法读取（{reason}）/ cannot read the file ({reason})"
_FILE_TOO_BIG = "文件超过 {mb} MB / file larger than {mb} MB"
_TOO_MANY_MEMBERS = "压缩包内文件超过 {n} 个 / more than {n} files inside the archive"
_DIRECTORY_TOO_BIG = "压缩包目录超过 {mb} MB / archive directory larger than {mb} MB"
_MEMBER_TOO_BIG = "{member} 解压后超过 {mb} MB / {member} uncompressed is larger than {mb} MB"
_TOTAL_TOO_BIG = "解压后总大小超过 {mb} MB / larger than {mb} MB uncompressed"
_TOO_MANY_ROWS = "超过 {n} 行 / more than {n} rows"
_TOO_MANY_COLUMNS = "第{row}行: 第 {n} 列之后还有数据 / row {row} has data beyond column {n}"
_TOO_MANY_CELLS = "超过 {n} 个单元格 / more than {n} cells"
_ROW_TOO_WIDE = "第{row}行: 超过 {n} 个单元格 / row {row} has more than {n} cells"
_TOO_COMPLEX = (
    "{member} 结构过于复杂（超过 {n} 个元素）/ {member} is too complex (more than {n} elements)"
)
_LINE_TOO_LONG = "第{line}行: 超过 {n} 个字符 / line {line} is longer than {n} characters"

_Cell = TypeVar("_Cell")


def _refuse(name: str, problem: str) -> RosterError:
    return RosterError([f"{name}: {problem}"])


def read_limited(path: Path, limits: Limits = ROSTER_LIMITS) -> bytes:
    """The bytes of `path`; `RosterError` when there are more than `limits.file_bytes`.

    The size is checked before reading and again by reading one byte past the limit, since a
    file may grow meanwhile (or be a pipe). Raises `OSError` when the file cannot be read.
    """
    refusal = _refuse(path.name, _FILE_TOO_BIG.format(mb=limits.file_bytes // MB))
    if path.stat().st_size > limits.file_bytes:
        raise refusal
    with path.open("rb") as f:
        data = f.read(limits.file_bytes + 1)
    if len(data) > limits.file_bytes:
        raise refusal
    return data


# ---------------------------------------------------------------------------- .xlsx archives
def check_xlsx(name: str, data: bytes, limits: Limits = ROSTER_LIMITS) -> None:
    """Raise `RosterError` (naming `name` and the limit) unless the .xlsx in `data` is within
    `limits`, or when it is not a readable zip archive. Reads nothing but `data`."""
    entries, directory = _end_record(name, data)
    if entries > limits.members:
        raise _refuse(name, _TOO_MANY_MEMBERS.format(n=limits.members))
    if directory > limits.directory_bytes:
        raise _refuse(name, _DIRECTORY_TOO_BIG.format(mb=limits.directory_bytes // MB))
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
            _check_declared(name, members, limits)
            _check_contents(name, archive, members, limits)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        # A damaged, truncated or encrypted archive, or a compression method zipfile lacks.
        raise _refuse(name, UNREADABLE.format(reason=type(exc).__name__)) from exc


def _end_record(name: str, data: bytes) -> tuple[int, int]:
    """(members, central directory bytes) as the end record states them, before zipfile reads
    the directory into memory. An archive that needs ZIP64 for either (more than 65,534 members,
    a directory of 4 GB) has the field saturated, which is over any limit here."""
    tail = data[-(_END_RECORD.size + 0xFFFF) :]  # the record, then a comment of up to 64 KiB
    at = tail.rfind(_END_SIGNATURE)
    if at < 0 or len(tail) - at < _END_RECORD.size:
        raise _refuse(name, UNREADABLE.format(reason="BadZipFile"))
    fields = _END_RECORD.unpack_from(tail, at)
    return int(fields[4]), int(fields[5])


def _check_declared(name: str, members: Sequence[zipfile.ZipInfo], limits: Limits) -> None:
    if len(members) > limits.members:
        raise _refuse(name, _TOO_MANY_MEMBERS.format(n=limits.members))
    for info in members:
        if info.file_size > limits.member_bytes:
            member = info.filename
            raise _refuse(name, _MEMBER_TOO_BIG.format(member=member, mb=limits.member_bytes // MB))
    if sum(info.file_size for info in members) > limits.total_bytes:
        raise _refuse(name, _TOTAL_TOO_BIG.format(mb=limits.total_bytes // MB))


def _check_contents(
    name: str, archive: zipfile.ZipFile, members: Sequence[zipfile.ZipInfo], limits: Limits
) -> None:
    """Decompress every member in chunks, counting real bytes and scanning the XML.

    zipfile itself stops at the declared size and then fails the CRC check; counting here keeps
    the limits whatever the reader does.
    """
    total = 0
    cells = _Counter()
    roots: dict[str, str] = {}
    for info in members:
        scan = _XmlScan(name, info.filename, limits, cells)
        size = 0
        with archive.open(info) as member:
            while chunk := member.read(_CHUNK):
                size += len(chunk)
                total += len(chunk)
                if size > limits.member_bytes:
                    mb = limits.member_bytes // MB
                    raise _refuse(name, _MEMBER_TOO_BIG.format(member=info.filename, mb=mb))
                if total > limits.total_bytes:
                    raise _refuse(name, _TOTAL_TOO_BIG.format(mb=limits.total_bytes // MB))
                scan.feed(chunk)
        scan.feed(b"", final=True)
        roots[info.filename] = scan.root if scan.xml else ""
    _check_parts(name, archive, roots)


@dataclass(slots=True)
class _Counter:
    value: int = 0


class _Unscanned(Exception):
    """Stop scanning a member that openpyxl cannot read either."""


_MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_WORKSHEET, _SST = f"{_MAIN} worksheet", f"{_MAIN} sst"
_ROW, _STRING = f"{_MAIN} row", f"{_MAIN} si"
_VALUES = (f"{_MAIN} v", f"{_MAIN} is")


class _XmlScan:
    """What openpyxl would keep of one XML member, counted as its bytes go by.

    openpyxl streams a worksheet row by row and a shared-string table string by string, clearing
    each row (each `si`) once read; every other element it keeps until the part is done, and other
    parts it parses whole. So every element outside a row or string counts against
    `limits.elements`, as do the elements of any one row or string; row numbers, columns holding
    a value and cells (strings too: they cannot outnumber the cells using them) count against
    their own limits. Which rule applies is decided by the root element (`worksheet`, `sst`);
    `_check_parts` makes sure openpyxl will read those members as what they say they are. A member
    that is not well-formed XML (a picture) is not scanned further: openpyxl cannot parse it.
    """

    def __init__(self, name: str, member: str, limits: Limits, cells: _Counter) -> None:
        self.name = name
        self.part = f"{name}[{member}]"  # for problems of one part
        self.member = member
        self.limits = limits
        self.cells = cells
        self.parser = expat.ParserCreate(namespace_separator=" ")
        self.parser.StartElementHandler = self._start
        self.parser.EndElementHandler = self._end
        self.parser.EntityDeclHandler = self._entity
        self.xml = True
        self.root = ""
        self.sheet = False  # the root is a worksheet (else maybe a string table, else neither)
        self.depth = 0  # of the element just opened
        self.unit_depth = 0  # of the open row or string; 0: none open
        self.kept = 0  # elements openpyxl keeps for the whole part
        self.unit = 0  # elements of the open row or string
        self.row = 0  # spreadsheet row number of the open row
        self.row_cells = 0
        self.column = 0  # of the open cell

    def feed(self, chunk: bytes, *, final: bool = False) -> None:
        if not self.xml:
            return
        try:
            self.parser.Parse(chunk, final)
        except (expat.ExpatError, _Unscanned):
            self.xml = False

    def _entity(self, *_: object) -> None:
        # openpyxl parses with defusedxml, which refuses a part that declares an entity before
        # reading any element of it: such a member costs it nothing, so it need not be scanned
        # (nor expanded here). Pictures (SVG) may declare entities and are never parsed.
        raise _Unscanned

    def _end(self, _: str) -> None:
        if self.depth == self.unit_depth:
            self.unit_depth = 0
        self.depth -= 1

    def _start(self, tag: str, attrs: dict[str, str]) -> None:
        # Called for every element of every member: the row path is kept short.
        self.depth += 1
        if self.unit_depth:
            self.unit += 1
            if self.unit > self.limits.elements:
                raise self._too_complex()
            if self.sheet:
                if self.depth == self.unit_depth + 1:  # openpyxl reads each child as a cell
                    self._cell(attrs.get("r"))
                elif self.depth == self.unit_depth + 2 and tag in _VALUES:
                    self._value()
        elif self.depth == 1:
            self.root = tag
            self.sheet = tag == _WORKSHEET
            self.kept = 1
        elif (tag == _ROW and self.sheet) or (tag == _STRING and self.root == _SST):
            self._open_unit(attrs.get("r"))
        else:
            self.kept += 1
            if self.kept > self.limits.elements:
                raise self._too_complex()

    def _open_unit(self, row: str | None) -> None:
        self.unit_depth = self.depth
        self.unit = 1
        if not self.sheet:  # a shared string
            self._count_cell()
            return
        self.row = _number(row, self.row + 1)
        self.row_cells = self.column = 0
        if self.row > self.limits.rows + 1:  # row 1 is the header
            raise _refuse(self.part, _TOO_MANY_ROWS.format(n=self.limits.rows))

    def _cell(self, reference: str | None) -> None:
        self.row_cells += 1
        self.column = _column(reference) if reference else self.column + 1
        self._count_cell()
        if self.row_cells > EXCEL_COLUMNS:
            raise _refuse(self.part, _ROW_TOO_WIDE.format(row=self.row, n=EXCEL_COLUMNS))

    def _value(self) -> None:
        if self.column > self.limits.columns:
            problem = _TOO_MANY_COLUMNS.format(row=self.row, n=self.limits.columns)
            raise _refuse(self.part, problem)

    def _count_cell(self) -> None:
        self.cells.value += 1
        if self.cells.value > self.limits.cells:
            raise _refuse(self.name, _TOO_MANY_CELLS.format(n=self.limits.cells))

    def _too_complex(self) -> RosterError:
        return _refuse(self.name, _TOO_COMPLEX.format(member=self.member, n=self.limits.elements))


# Parts openpyxl reads whole from fixed names (relationship parts too, by their suffix).
_READ_WHOLE = frozenset(
    ("[Content_Types].xml", "xl/workbook.xml", "xl/styles.xml", "docProps/core.xml",
     "docProps/custom.xml")
)  # fmt: skip
_INCONSISTENT = "inconsistent parts"


def _check_parts(name: str, archive: zipfile.ZipFile, roots: dict[str, str]) -> None:
    """Refuse an archive in which openpyxl would read a worksheet or string table as something
    else (parsed whole, its rows never cleared): the scan's counts hold only if it does not.

    openpyxl finds parts by fixed names, by the content types and through relationships; each
    of these must give a streamed member the use its root element says.
    """
    uses = {_WORKSHEET: "worksheet", _SST: "sharedStrings"}
    streamed = {member: uses[root] for member, root in roots.items() if root in uses}
    if not streamed:
        return
    refusal = _refuse(name, UNREADABLE.format(reason=_INCONSISTENT))
    if any(m in _READ_WHOLE or m.endswith(".rels") for m in streamed):
        raise refusal
    try:  # the parts parsed here were scanned as parts openpyxl parses whole: small enough
        types = _content_types(archive) if "[Content_Types].xml" in roots else {}
        bad = [m for m, use in streamed.items() if f"{use}+xml" not in types.get(m, f"{use}+xml")]
        for rels in (m for m in roots if m.endswith(".rels")):
            for target, kind in _relationships(archive, rels):
                use = streamed.get(target)
                if use is not None and not kind.endswith(f"/{use}"):
                    bad.append(target)
    except (ElementTree.ParseError, ValueError):  # ValueError: defusedxml refusing a trick
        raise refusal from None
    if bad:
        raise refusal


def _content_types(archive: zipfile.ZipFile) -> dict[str, str]:
    root = safe_fromstring(archive.read("[Content_Types].xml"))
    return {
        el.get("PartName", "").lstrip("/"): el.get("ContentType", "")
        for el in root
        if el.tag.endswith("}Override")
    }


def _relationships(archive: zipfile.ZipFile, rels: str) -> Iterator[tuple[str, str]]:
    """(target member, relationship type) of each internal relationship in `rels`, the target
    resolved as openpyxl resolves it."""
    parent = posixpath.dirname(posixpath.dirname(rels))  # "xl/_rels/workbook.xml.rels" -> "xl"
    for el in safe_fromstring(archive.read(rels)):
        target = el.get("Target", "")
        if el.get("TargetMode") == "External" or not target:
            continue
        if target.startswith("/"):
            yield target[1:], el.get("Type", "")
        else:
            yield posixpath.normpath(posixpath.join(parent, target)), el.get("Type", "")


def _number(text: str | None, default: int) -> int:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default  # openpyxl will refuse it, more precisely


def _column(reference: str) -> int:
    """The column number of a cell reference such as "AB12" (0 when it has no letters)."""
    return _column_of_letters(reference.rstrip("0123456789"))


@functools.lru_cache(maxsize=EXCEL_COLUMNS)
def _column_of_letters(letters: str) -> int:
    number = 0
    for char in letters.upper():
        if not "A" <= char <= "Z":
            return 0
        number = number * 26 + ord(char) - ord("A") + 1
    return number


# ---------------------------------------------------------------------------- rows as they stream
class RowLimiter:
    """Counts the rows and cells of one file (all its sheets) as they stream by."""

    def __init__(self, name: str, limits: Limits = ROSTER_LIMITS) -> None:
        self.name = name
        self.limits = limits
        self.cells = 0

    def rows(self, label: str, rows: Iterable[Sequence[_Cell]]) -> Iterator[Sequence[_Cell]]:
        """The rows of one sheet (`label` in messages), each cut after its last filled cell;
        `RosterError` at the first limit passed, before later rows are read."""
        limits = self.limits
        for number, row in enumerate(rows, start=1):
            if number > limits.rows + 1:  # row 1 is the header
                raise _refuse(label, _TOO_MANY_ROWS.format(n=limits.rows))
            width = len(row)
            while width and row[width - 1] in (None, ""):
                width -= 1
            if width > limits.columns:
                raise _refuse(label, _TOO_MANY_COLUMNS.format(row=number, n=limits.columns))
            self.cells += sum(1 for value in row[:width] if value not in (None, ""))
            if self.cells > limits.cells:
                raise _refuse(self.name, _TOO_MANY_CELLS.format(n=limits.cells))
            yield row[:width]


def limited_lines(name: str, text: TextIO, limits: Limits = ROSTER_LIMITS) -> Iterator[str]:
    """The lines of `text`, never reading more than one over-long line into memory."""
    number = 0
    while line := text.readline(limits.line_chars + 2):
        number += 1
        if len(line.rstrip("\r\n")) > limits.line_chars:
            raise _refuse(name, _LINE_TOO_LONG.format(line=number, n=limits.line_chars))
        yield line
