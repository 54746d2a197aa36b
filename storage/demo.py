"""The demo roster: one fictional school, five staff and twelve students, for trying the bot out.

Every name here is invented. Student numbers start with DEMO so they can never collide with a real
学籍号, and importing only ever deactivates students of the demo school.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.engine import Connection

from bot.core.types import StaffRole
from storage.roster import ImportReport, Origin, Roster, StaffEntry, StudentEntry, import_roster

DEMO_SCHOOL = "示例区实验小学"
_SOURCE = "demo"

# staff_no, name, school, role, WeCom userid, DingTalk userid
_STAFF = (
    ("B001", "示例局员", "", StaffRole.BUREAU, "", ""),
    ("C001", "甲协调", DEMO_SCHOOL, StaffRole.COORDINATOR, "", ""),
    ("T001", "张示例", DEMO_SCHOOL, StaffRole.TEACHER, "zhanglaoshi", "dt_zhang"),
    ("T002", "李示例", DEMO_SCHOOL, StaffRole.TEACHER, "", ""),
    ("T003", "赵示例", DEMO_SCHOOL, StaffRole.TEACHER, "", ""),
)

# student_no, name, class, categories, head teacher, carer ("" for none)
_STUDENTS = (
    ("DEMO0001", "王小雨", "三年级1班", ("建档立卡",), "T001", ""),
    ("DEMO0002", "陈小树", "三年级1班", ("低保", "留守"), "T001", ""),
    ("DEMO0003", "周小禾", "三年级1班", ("残疾",), "T001", ""),
    ("DEMO0004", "王小雨", "四年级2班", ("特困", "留守"), "T002", "T001"),
    ("DEMO0005", "孙小川", "四年级2班", ("孤儿",), "T002", ""),
    ("DEMO0006", "吴小岚", "四年级2班", ("大病", "低保"), "T002", ""),
    ("DEMO0007", "郑小石", "五年级1班", ("建档立卡", "留守"), "T003", "T002"),
    ("DEMO0008", "冯小苗", "五年级1班", ("低保",), "T003", ""),
    ("DEMO0009", "卫小溪", "五年级1班", ("残疾", "建档立卡"), "T003", ""),
    ("DEMO0010", "蒋小峰", "六年级3班", ("特困",), "T003", ""),
    ("DEMO0011", "沈小云", "六年级3班", ("留守",), "T003", "T001"),
    ("DEMO0012", "韩小星", "六年级3班", ("大病",), "T003", ""),
)


def demo_roster() -> Roster:
    """The fictional demo roster. T001 has two students named 王小雨 in different classes."""
    staff = tuple(
        StaffEntry(Origin(_SOURCE, row), no, name, school, role, wecom, dingtalk)
        for row, (no, name, school, role, wecom, dingtalk) in enumerate(_STAFF, start=2)
    )
    students = tuple(
        StudentEntry(Origin(_SOURCE, row), no, name, DEMO_SCHOOL, cls, cats, head, carer)
        for row, (no, name, cls, cats, head, carer) in enumerate(_STUDENTS, start=2)
    )
    return Roster(students=students, staff=staff)


def load_demo(conn: Connection, *, now: datetime) -> ImportReport:
    """Import the demo roster in the caller's transaction; a second load changes nothing."""
    return import_roster(conn, demo_roster(), now=now)
