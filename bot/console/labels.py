"""The console's words for states, roles and actions (zh-CN), in one place."""

from __future__ import annotations

from bot.core.console_ports import VisitState
from bot.core.types import FollowUpStatus, StaffRole

VISIT_STATES = {
    VisitState.VISITED: "本周期已访",
    VisitState.PENDING: "未联系上，待再访",
    VisitState.DUE: "待访",
    VisitState.OVERDUE: "已逾期",
}
STUDENT_FILTERS = {
    "": "全部",
    "unvisited": "本周期未访",
    "due": "到期待访",
    "overdue": "逾期未访",
    "never": "从未家访",
    "unreachable": "联系不上",
    "visited": "本周期已访",
}
FOLLOWUP_FILTERS = {
    "": "全部",
    "open": "待跟进",
    "overdue": "已逾期",
    "escalated": "已上报",
    "done": "已完成",
}
FOLLOWUP_STATES = {
    FollowUpStatus.OPEN: "待跟进",
    FollowUpStatus.ESCALATED: "已上报",
    FollowUpStatus.DONE: "已完成",
}
ROLES = {
    StaffRole.TEACHER: "教师",
    StaffRole.COORDINATOR: "资助协调员",
    StaffRole.BUREAU: "教育局",
}
ASSIGNMENT_ROLES = {"head_teacher": "班主任", "carer": "包靠教师"}
AUDIT_ACTIONS = {
    "console_signin": "登录后台",
    "student_view": "查看学生",
    "export": "导出数据",
    "roster_import": "导入名单",
    "roster_preview": "预览名单",
    "student_export": "导出学生数据",
    "student_erase": "删除学生数据",
    "retention": "到期删除",
    "screen_import": "写入筛查名单",
    "aid_stock": "登记物资库存",
    "distribution_create": "创建发放",
    "distribution_deliver": "登记发放送达",
    "distribution_ledger": "下载发放台账",
    "aid_review": "资助认定",
    "aid_list": "下载资助名单",
}
ROSTER_COUNTS = {
    "staff_added": "教师新增",
    "staff_updated": "教师更新",
    "students_added": "学生新增",
    "students_updated": "学生更新",
    "students_deactivated": "学生停用",
}
