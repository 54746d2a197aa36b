"""Every sentence the bot says to a teacher (zh-CN), in one place."""

from __future__ import annotations

NOT_REGISTERED = (
    "你好！你还没有在家访助手中登记或绑定，暂时不能使用。\n"
    "请向学校的资助协调员要一个绑定码，然后发送：绑定 工号 绑定码（例如：绑定 T001 K7M2P9QX）。\n"
    "也可以把你的ID【{user_id}】发给协调员登记。"
)
# (the console and the JSON channel: the user id is the staff number, there is nothing to bind)
UNKNOWN_STAFF_NO = (
    "工号【{user_id}】不在名单里或已停用，请核对工号，或请学校的资助协调员把你加进名单。"
)
WELCOME = "欢迎关注！我是家访助手，帮老师们逐一登记学生的网上家访情况。"
APOLOGY = "抱歉，系统刚才出了点问题，这条消息没有处理成功。你填过的内容都已保存，请稍后再发一次。"
UNAVAILABLE = "抱歉，系统暂时繁忙（数据库连接不上），这条消息没有处理。请过几分钟再发一次。"
ALREADY_HANDLED = "这条消息之前已经收到并处理过了。"
GREETING = "你好，{name}老师！我是家访助手，帮你逐一登记学生的网上家访情况。"
TEXT_ONLY = "暂时只能处理文字消息，请用文字回复。"
TOO_LONG_MESSAGE = "消息太长了（{length}字），请控制在{limit}字以内。"
EMPTY_ANSWER = "没有收到内容。"
TOO_LONG_ANSWER = "回答太长了（{length}字），请控制在{limit}字以内。"
OUT_OF_RANGE = "没有第{n}项，请回复 1 到 {count} 之间的序号。"
NOT_AN_OPTION = "没能识别这个回答，请回复选项前的序号（1 到 {count}）或选项文字。"
NOT_WITH_OTHERS = "“{option}”不能和其他选项一起选，请重新回复。"
NOT_A_NUMBER = "请回复一个整数。"
NUMBER_RANGE = "请回复 {min} 到 {max} 之间的数。"
NOT_A_DATE = "没能识别日期，请按 2026-03-02 或 3月2日 的格式回复。"

HELP = (
    "可以随时发送这些指令：\n"
    "家访 — 列出你的学生（最需要先访的在前）；家访 班级 / 家访 类别 / 家访 未访 — 只看一部分\n"
    "更多 — 名单的下一页\n"
    "继续 — 接着填未完成的家访草稿\n"
    "稍后 或 取消 — 先退出，草稿会保存\n"
    "放弃 — 删除当前这份草稿（会先问你确认）\n"
    "上一题 — 回到上一题；跳过 — 跳过选填题；修改 N — 修改第 N 项回答\n"
    "待跟进 — 查看你的待跟进事项\n"
    "完成 N 备注 — 把列表第 N 项跟进标记为完成，例如：完成 1 平板已送到\n"
    "送达 N — 学校为列表第 N 项发放的物资已送到家\n"
    "撤销 — 撤回10分钟内的“完成”或提交\n"
    "进度 — 查看你本周期的家访进度\n"
    "新增学生 姓名 班级 说明 — 上报不在名单上的困难学生，转学校资助专员认定\n"
    "（English: visit, more, resume, later, cancel, discard, back, skip, edit N, todo, "
    "done N note, undo, progress, help）"
)
UNKNOWN_IDLE = "没听懂这句话。回复“家访”开始登记，回复“帮助”查看全部指令。"
UNKNOWN_WITH_DRAFTS = "没听懂这句话。你有{count}份未完成的家访草稿："
DRAFTS_FOOT = "回复序号接着填，或回复“家访”查看全部学生。"

NO_STUDENTS = "你的名下还没有学生。如有疑问请联系学校的资助协调员。"
NO_STUDENTS_COORDINATOR = (
    "你的名下没有要家访的学生。回复“概况”“未访”查看家访情况，“帮助”查看全部指令。"
)
LIST_HEADER = "你负责的学生共{count}名（最需要先访的在前）："
LIST_HEADER_FILTERED = "你负责的学生中“{filter}”共{count}名："
LIST_PAGE = "（第{first}–{last}名，共{count}名；回复“更多”看下一页）"
LIST_FOOTER = "回复序号或姓名开始家访。"
NO_FILTER_MATCH = (
    "你的学生里没有符合“{filter}”的。可以按班级、资助类别或“未访”筛选，例如：家访 未访"
)
NO_MORE = "名单已经全部列出了。"
DRAFT_HINT = "你还有{count}份未完成的家访草稿（标着“有草稿”），回复“继续”接着填 {student} 的。"
NEVER_VISITED = "从未家访"
DAYS_AGO = "{days}天前访过"
TODAY_VISITED = "今天已访"
OPEN_FOLLOWUPS = "待跟进{count}项"
LAST_UNREACHED = "上次没联系上"
HAS_DRAFT = "有草稿"
STUDENT_NO_TAIL = "学籍号尾号{tail}"
OVERDUE_VISIT = "已逾期{days}天"
DUE_TODAY = "今天到期"
NO_CATEGORY = "无类别"
NOT_NOW = "“{word}”现在用不上。回复“帮助”查看可以用的指令，或回复“家访”开始。"
NO_LIST = "现在没有正在看的名单。回复“家访”查看学生，回复“待跟进”查看跟进事项。"
NOT_IN_LIST = "当前名单里没有第{n}项（共{count}项）。"
STUDENT_GONE = "这名学生已不由你负责了。回复“家访”查看你现在的学生。"
NO_SUCH_NAME = "你的名单里没有叫“{name}”的学生。回复“家访”查看你负责的学生。"
SAME_NAME = "你的名单里有{count}名学生叫“{name}”，请回复序号选择："
SEVERAL_MATCHES = "找到{count}名可能的学生，请回复序号选择："
DID_YOU_MEAN = "你是说 {student} 吗？回复“是”开始家访，或重新输入姓名。"
PICK_HINT = "请回复序号或学生姓名；回复“取消”退出。"

VISIT_STARTED = "开始登记 {student} 的家访。随时可回复“稍后”保存草稿。"
VISIT_RESUMED = "继续 {student} 的家访草稿，已填的回答都在。"
QUESTION_HEAD = "【第{n}题/共{total}题】{student}"
MULTI_HINT = "（可多选，用顿号或空格分开，例如：1、3）"
OPTIONAL_HINT = "（选填，可回复“跳过”）"
CURRENT_ANSWER = "（当前回答：{answer}；重新回复即可修改）"
NOT_OPTIONAL = "这道题必须回答，不能跳过。"
FIRST_QUESTION = "已经是第一题了。"
COMMAND_AS_ANSWER = "“{word}”是一个指令，这一题还没有回答。如果这就是你要写的内容，请多写几个字。"
CUT_ASK = (
    "你写了{length}字，这里最多{limit}字。回复“确定”只保存前{limit}字（到“…{end}”为止），"
    "或重新发一段更短的。"
)
SUMMARY_HEAD = "请核对 {student} 的家访记录："
SUMMARY_FOOT = "回复“提交”保存；“修改 N”修改第 N 项；“放弃”删除这份草稿。"
SUMMARY_EXPECT = "现在是核对环节：回复“提交”保存，“修改 N”修改第 N 项，或“放弃”删除草稿。"
NO_SUCH_ITEM = "没有第{n}项，可修改的是第 1 到 {count} 项。"
SKIPPED = "（已跳过）"
SUBMITTED = "已提交 {student} 的家访记录，谢谢！"
SUBMITTED_UNREACHED = "已记录：这次没有联系上 {student} 的家庭，系统会提醒你尽快再联系。"
SCHOOL_TOLD = "已同时告知学校的资助协调员。"
SCHOOL_NOT_REACHABLE = "学校的资助协调员还收不到系统消息（没有绑定聊天账号），请直接告诉协调员。"
DONE_WHICH = "请先看一下要完成的是哪一项（序号以这个列表为准）："
FOLLOWUP_ALREADY_DONE = "第{n}项已经完成了。回复“待跟进”查看还没完成的事项。"
UNDO_IN_VISIT = (
    "正在填这份家访，“撤销”不会动它。要回到上一题请回复“上一题”；"
    "要撤回刚才提交的家访，请先回复“稍后”。"
)
NAME_AGAIN = "好的，请重新输入学生姓名，或回复“家访”查看名单。"
LEFT_EMPTY = "好的，{student} 的家访还没有填，已退出。"
ALERT_UNREACHED = (
    "【需要协助】{student} 的家庭已连续{count}次联系不上（{days}），负责老师：{teacher}。"
    "请协助联系（社区、村委、其他家长或上门），联系上后请告诉负责老师。"
)
ALERT_URGENT = "【今日需跟进】{teacher}老师家访 {student} 时发现：{needs}。请今天内跟进。"
UNDO_HINT = "填错了的话，10分钟内可回复“撤销”。"
NEW_FOLLOWUPS = "新增跟进事项{count}项："
NEXT_HINT = "回复“家访”继续下一位学生。"
DISCARD_ASK = (
    "确定删除 {student} 这份已填了{count}题的草稿吗？回复“确定删除”删除；回复其他内容继续填写。"
)
DISCARD_KEPT = "好的，草稿保留着，我们接着填。"
NOTHING_TO_DISCARD = "没有等待删除的草稿。"
DISCARDED = "已删除 {student} 的这份家访草稿。"
DRAFT_GONE = (
    "{student} 的这份家访草稿已提交或删除，或这名学生已不由你负责，这里不再修改。"
    "回复“家访”查看名单。"
)
DRAFT_CHANGED = "这份草稿刚在别处改过，下面是最新的内容，请再核对一遍。"
PARKED = "已保存 {student} 的家访草稿，回复“继续”可接着填。"
NO_DRAFT = "没有未完成的家访草稿。回复“家访”开始新的家访。"
NOTHING_TO_CANCEL = "当前没有进行中的家访。"
LEFT_LIST = "好的，已退出。"
NOT_IN_VISIT = "当前没有进行中的家访，回复“家访”开始。"
EXPIRED_DRAFT = "好久不见！{student} 的家访草稿还在，我们接着填这一题："

FOLLOWUPS_NONE = "你目前没有待跟进的事项。"
FOLLOWUPS_HEAD = "你的待跟进事项（{count}项）："
FOLLOWUPS_MORE = "你的待跟进事项（续）："
FOLLOWUPS_FOOT = "办完后回复“完成 序号 备注”，例如：完成 1 平板已送到。"
FOLLOWUP_LINE = "{n}. {student} · {kind}：{detail} · {due}"
FOLLOWUP_SHOWN = "第{n}项：{line}\n办完后回复“完成 {n} 备注”，例如：完成 {n} 平板已送到。"
DUE_ON = "{date}前完成"
OVERDUE = "已逾期{days}天"
ESCALATED = "（已上报）"
FOLLOWUP_DONE = "已完成第{n}项：{student} · {kind}：{detail}。{note}"
FOLLOWUP_NOTE = "备注：{note}"
NO_SUCH_FOLLOWUP = (
    "当前名单里第{n}项不是待跟进事项。回复“待跟进”查看你的跟进事项（格式：完成 1 平板已送到）。"
)
DONE_FORMAT = "格式：完成 序号 备注，例如：完成 1 平板已送到。"
PROGRESS = (
    "近{days}天已家访 {visited}/{total} 名学生{rest}。\n待跟进 {open} 项，其中已逾期 {overdue} 项。"
)
PROGRESS_REST = "，还有 {left} 名待访"

UNDONE_FOLLOWUP = "已撤销：{student} · {kind}：{detail} 重新列为待跟进。"
UNDONE_VISIT = "已撤销提交，{student} 的家访回到草稿，可以修改后重新提交。"
NOTHING_TO_UNDO = "没有可以撤销的操作（只能撤销10分钟内的“完成”或提交）。"
CANNOT_UNDO_VISIT = (
    "这次家访的跟进事项已经有人处理，不能再撤销提交了。如需更正请联系学校的资助协调员。"
)

CONSOLE_LINK = (
    "家访后台登录链接（{minutes}分钟内有效，只能用一次，请勿转发）：\n{url}\n"
    "链接过期后再发“后台”即可获取新的。"
)
CONSOLE_NOT_FOR_TEACHERS = (
    "家访后台是给学校资助协调员和教育局用的；老师请直接在这里回复“家访”“进度”等指令。"
)

# -- binding a chat identity with a code (handlers/binding.py)
BIND_USAGE = (
    "绑定的格式是：绑定 工号 绑定码（例如：绑定 T001 K7M2P9QX）。绑定码请向学校的资助协调员要。"
)
BIND_NOT_NEEDED = "这里直接按工号使用，不需要绑定。"
BIND_LOCKED = "绑定码错误次数太多，请{minutes}分钟后再试，或请协调员重新生成绑定码。"
BIND_WRONG = "工号或绑定码不对，或绑定码已过期、已用过。请核对后再发一次，或请协调员重新生成。"
BIND_TAKEN = "这个账号已经绑定了另一位老师，不能再绑定。如有疑问请联系学校的资助协调员。"
BIND_ALREADY = "这个账号已经绑定在{name}老师名下，不需要再绑定。"
BIND_DONE = "绑定成功！{name}老师，以后在这里就可以使用家访助手，提醒也会发到这里。"
BIND_CODE_NOT_FOR_TEACHERS = "绑定码由学校的资助协调员生成。"
BIND_CODE_USAGE = "生成绑定码的格式是：绑定码 工号（例如：绑定码 T001）。"
BIND_CODE_UNKNOWN = "本校没有在职的工号 {staff_no}，请核对后再发。"
BIND_CODE = (
    "{name}（{staff_no}）的绑定码：{code}\n"
    "{hours}小时内有效，只能用一次；再生成一次，这一个就作废。\n"
    "请老师在要使用的聊天工具（企业微信、钉钉、微信公众号、飞书）里发送：绑定 {staff_no} {code}"
)

# ---------------------------------------------------------------- the next visit asks (#14)
CHECK_OPEN = "还未办结：{detail}"
CHECK_DONE = "{date}已完成{note}"
CHECK_OPTIONS = "\n1. 已解决\n2. 仍需帮助"
CHECK_RESOLVED_WORDS = frozenset({"1", "已解决", "解决", "解决了", "已经解决", "好了", "不需要了"})
CHECK_STILL_WORDS = frozenset({"2", "仍需帮助", "还需要", "需要", "还需帮助", "没解决", "未解决"})
CHECK_AGAIN = "请回复 1（已解决）或 2（仍需帮助）。"
CHECK_CLOSED_NOTE = "下次家访确认已解决"
AID_NUMBER = "要发放请回复“发放 {n}”，送到了请回复“送达 {n}”。"
# An aid item allocated against the need (#15): arrived, in use?
AID_CHECK = "学校已发放{item}：收到了吗？在用吗？"
AID_CHECK_OPTIONS = "\n1. 在用\n2. 没收到\n3. 用不了"
AID_CHECK_AGAIN = "请回复 1（在用）、2（没收到）或 3（用不了）。"
AID_CHECK_WORDS = {
    "in_use": frozenset({"1", "在用", "在用了", "收到了", "收到在用", "用上了", "能用"}),
    "not_received": frozenset({"2", "没收到", "还没收到", "未收到", "没有收到"}),
    "unusable": frozenset({"3", "用不了", "不能用", "坏了", "用不上"}),
}
AID_OUTCOME = {"not_received": "还没收到", "unusable": "收到了但用不了"}
ALERT_AID = (
    "【物资】{teacher}老师家访 {student} 时反馈：学校发放的{item}{outcome}，"
    "这项需求仍未解决，请跟进。"
)


# -- a reminder's lists (handlers/reminders.py), and a 催办, which is the same reminder sent now
REMINDER_STUDENTS = "待家访学生{count}名（最久未访在前）："
REMINDER_FOLLOWUPS = "待办跟进{count}项："
REMINDER_PICK = "回复序号开始家访，例如回复 1"
REMINDER_DONE = "办完跟进回复“完成 序号 备注”，例如：完成 {n} 平板已送到"
