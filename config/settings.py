"""Settings: one frozen object, loaded once from an injectable mapping (environment + `.env`).

Loading collects every problem before failing, so an operator fixes a misconfiguration in one go.
Secrets are wrapped in `Secret` so they never show up in a repr or a log line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dotenv import dotenv_values

from bot.core.errors import ConfigError
from config.aid import DEFAULT_AID
from config.calendar import DEFAULT_CALENDAR
from config.cron import crontab_trigger

DEFAULT_FORM = Path(__file__).parent / "forms" / "home_visit.yaml"
DEFAULT_CATEGORY_CYCLES = {"孤儿": 7, "大病": 7}


class Secret:
    """A string that masks itself in repr/str; use `.value` where the real text is needed."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    @property
    def value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class QuietHours:
    start: time
    end: time

    def contains(self, t: time) -> bool:
        if self.start <= self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end  # window crosses midnight

    def release(self, moment: datetime, tz: tzinfo) -> datetime | None:
        """When `moment` falls inside the window (read in `tz`), the moment it ends; else None."""
        local = moment.astimezone(tz)
        if not self.contains(local.time()):
            return None
        end = local.replace(hour=self.end.hour, minute=self.end.minute, second=0, microsecond=0)
        if end <= local:
            end += timedelta(days=1)
        return end


@dataclass(frozen=True, slots=True)
class WeComSettings:
    corp_id: str
    agent_id: int
    secret: Secret
    token: Secret
    aes_key: Secret
    api_base: str


@dataclass(frozen=True, slots=True)
class WeChatSettings:
    """A WeChat Official Account (verified 服务号); `aes_key` set means safe/compatible mode."""

    app_id: str
    app_secret: Secret
    token: Secret
    aes_key: Secret | None
    template_reminder: str | None
    api_base: str


@dataclass(frozen=True, slots=True)
class DingTalkSettings:
    app_key: str
    app_secret: Secret
    robot_code: str
    mode: str
    api_base: str
    oapi_base: str


@dataclass(frozen=True, slots=True)
class FeishuSettings:
    """A Feishu self-built app. Webhook mode needs the token and key; ws mode uses neither."""

    app_id: str
    app_secret: Secret
    verification_token: Secret | None
    encrypt_key: Secret | None
    mode: str  # "webhook" (POST /feishu/callback) or "ws" (long connection, no public address)
    api_base: str


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = "sqlite:///./homevisit.db"
    tz: ZoneInfo = field(default_factory=lambda: ZoneInfo("Asia/Shanghai"))
    api_token: Secret | None = None
    wecom: WeComSettings | None = None
    dingtalk: DingTalkSettings | None = None
    feishu: FeishuSettings | None = None
    wechat: WeChatSettings | None = None
    dingtalk_digest_webhook: Secret | None = None
    dingtalk_digest_secret: Secret | None = None
    reminder_cron: str = "0 9 * * 1-5"
    digest_cron: str = "0 17 * * 1-5"
    quiet_hours: QuietHours = field(default_factory=lambda: QuietHours(time(21), time(7)))
    session_ttl: timedelta = timedelta(hours=72)
    visit_cycle_days: int = 14
    category_cycle_days: Mapping[str, int] = field(
        default_factory=lambda: dict(DEFAULT_CATEGORY_CYCLES)
    )
    escalate_after_days: int = 3  # school days overdue before the school's coordinators are told
    escalate_bureau_after_days: int = 2  # school days unacknowledged before it climbs to the bureau
    unreached_alert_after: int = 2  # family unreachable this many times in a row: tell the school
    form_path: Path = DEFAULT_FORM
    calendar_path: Path = DEFAULT_CALENDAR
    aid_path: Path = DEFAULT_AID  # aid item kinds and the follow-up kinds each meets
    # The base of links the bot hands out (console sign-in); https makes console cookies Secure.
    public_url: str = "http://127.0.0.1:8080"
    # `pgbouncer`: PostgreSQL is reached through a pooler in transaction mode (no session
    # settings, no server-side prepared statements: see storage.db); `none`: directly.
    pg_pooler: str = "none"
    metrics_token: Secret | None = None  # GET /metrics is off without it
    log_format: str = "text"  # or `json`: one object per line
    # Notes and sensitive answers of older visits, and students deactivated that long, are erased.
    retention_days: int = 730
    backup_dir: Path | None = None  # daily backups of a SQLite database (serve); None: off
    backup_keep: int = 14
    # a proactive message still failing on one channel after this goes out on the next
    fallback_after: timedelta = timedelta(minutes=60)
    # A scheduled job works in chunks of schools of about this many active students (memory
    # and transaction size are a chunk's); instances share the chunks under leases of
    # `job_lease`, renewed while they work: a dead instance's chunk is taken over after it.
    job_chunk_students: int = 20_000
    job_lease: timedelta = timedelta(seconds=30)


_WECOM_VARS = ("WECOM_CORP_ID", "WECOM_AGENT_ID", "WECOM_SECRET", "WECOM_TOKEN", "WECOM_AES_KEY")
_WECHAT_VARS = ("WECHAT_APP_ID", "WECHAT_APP_SECRET", "WECHAT_TOKEN")
_WECHAT_OPTIONAL = ("WECHAT_AES_KEY", "WECHAT_TEMPLATE_REMINDER")
_DINGTALK_VARS = ("DINGTALK_APP_KEY", "DINGTALK_APP_SECRET")
_FEISHU_VARS = ("FEISHU_APP_ID", "FEISHU_APP_SECRET")
_FEISHU_WEBHOOK_VARS = ("FEISHU_VERIFICATION_TOKEN", "FEISHU_ENCRYPT_KEY")
_DIGITS = re.compile(r"[0-9]{1,9}")
# Ranges that keep every date computed from a setting inside what Python's dates can hold, and
# that still cover any sensible school: a visit cycle or an escalation of up to a year, a
# conversation that waits up to a year for the teacher to come back.
MAX_DAYS = 366
MAX_SESSION_TTL_HOURS = 24 * 366
POOLERS = ("none", "pgbouncer")
LOG_FORMATS = ("text", "json")
_QUIET = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


def load_settings(
    environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env"
) -> Settings:
    """Read settings from `environ` (default: the process environment) over the `.env` file.

    Raises ConfigError naming every bad variable.
    """
    merged: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        merged.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    merged.update(os.environ if environ is None else environ)
    env = {k: v.strip() for k, v in merged.items() if v.strip() != ""}
    return _Parser(env).settings()


class _Parser:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def problem(self, var: str, text: str) -> None:
        self.problems.append(f"{var}: {text}")

    def settings(self) -> Settings:
        env = self.env
        kwargs: dict[str, object] = {}
        if "DATABASE_URL" in env:
            kwargs["database_url"] = self.database_url(env["DATABASE_URL"])
        if "HOMEVISIT_TZ" in env:
            try:
                kwargs["tz"] = ZoneInfo(env["HOMEVISIT_TZ"])
            except (ZoneInfoNotFoundError, ValueError):
                self.problem("HOMEVISIT_TZ", f"unknown time zone {env['HOMEVISIT_TZ']!r}")
        if "API_TOKEN" in env:
            if len(env["API_TOKEN"]) < 16:
                self.problem("API_TOKEN", "must be at least 16 characters")
            kwargs["api_token"] = Secret(env["API_TOKEN"])
        kwargs["wecom"] = self.wecom()
        kwargs["dingtalk"] = self.dingtalk()
        kwargs["feishu"] = self.feishu()
        kwargs["wechat"] = self.wechat()
        for var, key in (
            ("DINGTALK_DIGEST_WEBHOOK", "dingtalk_digest_webhook"),
            ("DINGTALK_DIGEST_SECRET", "dingtalk_digest_secret"),
        ):
            if var in env:
                kwargs[key] = Secret(env[var])
        for var, key in (("REMINDER_CRON", "reminder_cron"), ("DIGEST_CRON", "digest_cron")):
            if var in env:
                kwargs[key] = self.cron(var, env[var])
        if "QUIET_HOURS" in env:
            kwargs["quiet_hours"] = self.quiet_hours(env["QUIET_HOURS"])
        if "HOMEVISIT_SESSION_TTL_HOURS" in env:
            hours = self.whole_number("HOMEVISIT_SESSION_TTL_HOURS", MAX_SESSION_TTL_HOURS)
            kwargs["session_ttl"] = timedelta(hours=hours or 72)
        if "HOMEVISIT_VISIT_CYCLE_DAYS" in env:
            kwargs["visit_cycle_days"] = self.whole_number("HOMEVISIT_VISIT_CYCLE_DAYS") or 14
        if "HOMEVISIT_CATEGORY_CYCLE_DAYS" in env:
            kwargs["category_cycle_days"] = self.category_cycles(
                env["HOMEVISIT_CATEGORY_CYCLE_DAYS"]
            )
        if "HOMEVISIT_ESCALATE_AFTER_DAYS" in env:
            kwargs["escalate_after_days"] = self.whole_number("HOMEVISIT_ESCALATE_AFTER_DAYS") or 3
        if "HOMEVISIT_ESCALATE_BUREAU_AFTER_DAYS" in env:
            after = self.whole_number("HOMEVISIT_ESCALATE_BUREAU_AFTER_DAYS", 366)
            kwargs["escalate_bureau_after_days"] = after or 2
        if "HOMEVISIT_UNREACHED_ALERT_AFTER" in env:
            after = self.whole_number("HOMEVISIT_UNREACHED_ALERT_AFTER", 20)
            kwargs["unreached_alert_after"] = after or 2
        if "HOMEVISIT_CALENDAR" in env:
            calendar = Path(env["HOMEVISIT_CALENDAR"])
            if not calendar.is_file():
                self.problem("HOMEVISIT_CALENDAR", f"no such file {calendar}")
            kwargs["calendar_path"] = calendar
        if "HOMEVISIT_FORM" in env:
            path = Path(env["HOMEVISIT_FORM"])
            if not path.is_file():
                self.problem("HOMEVISIT_FORM", f"no such file {path}")
            kwargs["form_path"] = path
        if "HOMEVISIT_FALLBACK_AFTER_MINUTES" in env:
            minutes = self.whole_number("HOMEVISIT_FALLBACK_AFTER_MINUTES", 24 * 60)
            kwargs["fallback_after"] = timedelta(minutes=minutes or 60)
        if "HOMEVISIT_JOB_CHUNK_STUDENTS" in env:
            size = self.whole_number("HOMEVISIT_JOB_CHUNK_STUDENTS", 10_000_000)
            kwargs["job_chunk_students"] = size or 20_000
        if "HOMEVISIT_JOB_LEASE_SECONDS" in env:
            lease = self.whole_number("HOMEVISIT_JOB_LEASE_SECONDS", 3600, low=3)
            kwargs["job_lease"] = timedelta(seconds=lease or 30)
        if "HOMEVISIT_AID_ITEMS" in env:
            aid = Path(env["HOMEVISIT_AID_ITEMS"])
            if not aid.is_file():
                self.problem("HOMEVISIT_AID_ITEMS", f"no such file {aid}")
            kwargs["aid_path"] = aid
        if "HOMEVISIT_PUBLIC_URL" in env:
            kwargs["public_url"] = self.public_url(env["HOMEVISIT_PUBLIC_URL"])
        for var, key, allowed in (
            ("HOMEVISIT_PG_POOLER", "pg_pooler", POOLERS),
            ("HOMEVISIT_LOG_FORMAT", "log_format", LOG_FORMATS),
        ):
            if var in env:
                kwargs[key] = self.choice(var, allowed)
        if "HOMEVISIT_METRICS_TOKEN" in env:
            if len(env["HOMEVISIT_METRICS_TOKEN"]) < 16:
                self.problem("HOMEVISIT_METRICS_TOKEN", "must be at least 16 characters")
            kwargs["metrics_token"] = Secret(env["HOMEVISIT_METRICS_TOKEN"])
        if "HOMEVISIT_RETENTION_DAYS" in env:
            days = self.whole_number("HOMEVISIT_RETENTION_DAYS", 36600, low=30)
            kwargs["retention_days"] = days or 730
        if "HOMEVISIT_BACKUP_DIR" in env:
            kwargs["backup_dir"] = self.backup_dir(env["HOMEVISIT_BACKUP_DIR"])
        if "HOMEVISIT_BACKUP_KEEP" in env:
            kwargs["backup_keep"] = self.whole_number("HOMEVISIT_BACKUP_KEEP", 1000) or 14
        if self.problems:
            raise ConfigError(self.problems)
        return Settings(**kwargs)  # type: ignore[arg-type]

    def database_url(self, url: str) -> str:
        if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", url):
            self.problem("DATABASE_URL", "must start with sqlite:/// or postgresql://")
        return url

    def backup_dir(self, text: str) -> Path:
        path = Path(text)
        if path.exists() and not path.is_dir():
            self.problem("HOMEVISIT_BACKUP_DIR", f"{path} is not a folder")
        elif not self.env.get("DATABASE_URL", "sqlite").startswith("sqlite"):
            self.problem(
                "HOMEVISIT_BACKUP_DIR", "backups are for SQLite; use pg_dump for PostgreSQL"
            )
        return path

    def public_url(self, url: str) -> str:
        if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", url):
            self.problem("HOMEVISIT_PUBLIC_URL", "must be an http:// or https:// base URL")
        return url.rstrip("/")

    def choice(self, var: str, allowed: tuple[str, ...]) -> str:
        value = self.env[var].lower()
        if value not in allowed:
            self.problem(var, f"must be one of {', '.join(allowed)}, got {self.env[var]!r}")
        return value

    def whole_number(self, var: str, high: int = MAX_DAYS, low: int = 1) -> int | None:
        """A whole number from `low` to `high` (ASCII digits only: `²` is a digit to Python)."""
        text = self.env[var]
        if not _DIGITS.fullmatch(text) or not low <= int(text) <= high:
            self.problem(var, f"must be a whole number from {low} to {high}")
            return None
        return int(text)

    def category_cycles(self, text: str) -> dict[str, int]:
        """`孤儿:7,大病:7` (also with ， or ； and full-width colons); `none` for no overrides."""
        if text.strip().lower() == "none":
            return {}
        cycles: dict[str, int] = {}
        for part in re.split(r"[,，;；]", text):
            name, sep, days = part.replace("：", ":").partition(":")
            days = days.strip()
            if not sep or not name.strip() or not _DIGITS.fullmatch(days):
                self.problem(
                    "HOMEVISIT_CATEGORY_CYCLE_DAYS",
                    f"expected 类别:天数 pairs like 孤儿:7,大病:7, got {part.strip()!r}",
                )
                continue
            if not 1 <= int(days) <= MAX_DAYS:
                self.problem(
                    "HOMEVISIT_CATEGORY_CYCLE_DAYS",
                    f"{name.strip()}: days must be from 1 to {MAX_DAYS}, got {days}",
                )
                continue
            cycles[name.strip()] = int(days)
        return cycles

    def cron(self, var: str, expr: str) -> str:
        try:
            crontab_trigger(expr, ZoneInfo("UTC"))
        except ValueError as exc:
            self.problem(var, f"invalid crontab expression {expr!r} ({exc})")
        return expr

    def quiet_hours(self, text: str) -> QuietHours:
        m = _QUIET.match(text)
        if m:
            h1, m1, h2, m2 = (int(g) for g in m.groups())
            if h1 < 24 and h2 < 24 and m1 < 60 and m2 < 60:
                return QuietHours(time(h1, m1), time(h2, m2))
        self.problem("QUIET_HOURS", f"expected HH:MM-HH:MM, got {text!r}")
        return QuietHours(time(21), time(7))

    def require_all(self, names: tuple[str, ...], channel: str) -> bool:
        """True when the channel is on; a partial set is a problem naming what is missing."""
        present = [n for n in names if n in self.env]
        if not present:
            return False
        for name in names:
            if name not in self.env:
                self.problem(name, f"missing: the {channel} channel needs {', '.join(names)}")
        return len(present) == len(names)

    def wecom(self) -> WeComSettings | None:
        if not self.require_all(_WECOM_VARS, "WeCom"):
            return None
        env = self.env
        agent_id = 0
        if _DIGITS.fullmatch(env["WECOM_AGENT_ID"]) and int(env["WECOM_AGENT_ID"]) < 2**31:
            agent_id = int(env["WECOM_AGENT_ID"])
        else:
            self.problem("WECOM_AGENT_ID", "must be the app's AgentId (a number)")
        aes_key = env["WECOM_AES_KEY"]
        if not re.fullmatch(r"[A-Za-z0-9]{43}", aes_key):
            self.problem("WECOM_AES_KEY", "must be 43 letters and digits (the EncodingAESKey)")
        return WeComSettings(
            corp_id=env["WECOM_CORP_ID"],
            agent_id=agent_id,
            secret=Secret(env["WECOM_SECRET"]),
            token=Secret(env["WECOM_TOKEN"]),
            aes_key=Secret(aes_key),
            api_base=env.get("WECOM_API_BASE", "https://qyapi.weixin.qq.com").rstrip("/"),
        )

    def wechat(self) -> WeChatSettings | None:
        env = self.env
        optional = [n for n in _WECHAT_OPTIONAL if n in env]
        if not self.require_all(_WECHAT_VARS, "WeChat Official Account"):
            for name in optional:
                self.problem(name, f"set without {', '.join(_WECHAT_VARS)}")
            return None
        if not re.fullmatch(r"wx[0-9a-f]{16}", env["WECHAT_APP_ID"]):
            self.problem("WECHAT_APP_ID", "must be the account's AppID (wx and 16 hex digits)")
        if not re.fullmatch(r"[A-Za-z0-9]{3,32}", env["WECHAT_TOKEN"]):
            self.problem("WECHAT_TOKEN", "must be 3 to 32 letters and digits (the server Token)")
        aes_key = env.get("WECHAT_AES_KEY")
        if aes_key is not None and not re.fullmatch(r"[A-Za-z0-9]{43}", aes_key):
            self.problem("WECHAT_AES_KEY", "must be 43 letters and digits (the EncodingAESKey)")
        return WeChatSettings(
            app_id=env["WECHAT_APP_ID"],
            app_secret=Secret(env["WECHAT_APP_SECRET"]),
            token=Secret(env["WECHAT_TOKEN"]),
            aes_key=None if aes_key is None else Secret(aes_key),
            template_reminder=env.get("WECHAT_TEMPLATE_REMINDER"),
            api_base=env.get("WECHAT_API_BASE", "https://api.weixin.qq.com").rstrip("/"),
        )

    def dingtalk(self) -> DingTalkSettings | None:
        if not self.require_all(_DINGTALK_VARS, "DingTalk"):
            return None
        env = self.env
        mode = env.get("DINGTALK_MODE", "stream")
        if mode not in ("stream", "http"):
            self.problem("DINGTALK_MODE", "must be stream or http")
        return DingTalkSettings(
            app_key=env["DINGTALK_APP_KEY"],
            app_secret=Secret(env["DINGTALK_APP_SECRET"]),
            robot_code=env.get("DINGTALK_ROBOT_CODE", env["DINGTALK_APP_KEY"]),
            mode=mode,
            api_base=env.get("DINGTALK_API_BASE", "https://api.dingtalk.com").rstrip("/"),
            oapi_base=env.get("DINGTALK_OAPI_BASE", "https://oapi.dingtalk.com").rstrip("/"),
        )

    def feishu(self) -> FeishuSettings | None:
        """Webhook mode requires an Encrypt Key: without it Feishu signs nothing, and anyone
        who learnt the Verification Token could post events as any teacher."""
        if not self.require_all(_FEISHU_VARS, "Feishu"):
            for name in (*_FEISHU_WEBHOOK_VARS, "FEISHU_MODE"):
                if name in self.env:
                    self.problem(name, f"set without {' and '.join(_FEISHU_VARS)}")
            return None
        env = self.env
        mode = env.get("FEISHU_MODE", "webhook")
        if mode not in ("webhook", "ws"):
            self.problem("FEISHU_MODE", "must be webhook or ws")
        elif mode == "webhook":
            for name in _FEISHU_WEBHOOK_VARS:
                if name not in env:
                    self.problem(name, "missing: Feishu webhook mode needs it (or FEISHU_MODE=ws)")
        base = env.get("FEISHU_API_BASE", "https://open.feishu.cn").rstrip("/")
        if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", base):
            self.problem("FEISHU_API_BASE", "must be an http:// or https:// base URL")
        token, key = env.get("FEISHU_VERIFICATION_TOKEN"), env.get("FEISHU_ENCRYPT_KEY")
        return FeishuSettings(
            app_id=env["FEISHU_APP_ID"],
            app_secret=Secret(env["FEISHU_APP_SECRET"]),
            verification_token=Secret(token) if token else None,
            encrypt_key=Secret(key) if key else None,
            mode=mode,
            api_base=base,
        )
