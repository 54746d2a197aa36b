from __future__ import annotations

from datetime import time, timedelta
from pathlib import Path

import pytest

from bot.core.errors import ConfigError
from config.settings import Secret, load_settings

GOOD_WECOM = {
    "WECOM_CORP_ID": "wx5823bf96d3bd56c7",
    "WECOM_AGENT_ID": "1000002",
    "WECOM_SECRET": "s" * 20,
    "WECOM_TOKEN": "QDG6eK",
    "WECOM_AES_KEY": "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C",
}


def test_defaults() -> None:
    s = load_settings({}, env_file=None)
    assert s.database_url == "sqlite:///./homevisit.db"
    assert str(s.tz) == "Asia/Shanghai"
    assert s.api_token is None and s.wecom is None and s.dingtalk is None
    assert (s.reminder_cron, s.digest_cron) == ("0 9 * * 1-5", "0 17 * * 1-5")
    assert (s.quiet_hours.start, s.quiet_hours.end) == (time(21), time(7))
    assert s.session_ttl == timedelta(hours=72)


def test_every_bad_variable_is_named_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(
            {
                "HOMEVISIT_TZ": "Mars/Olympus",
                "REMINDER_CRON": "every morning",
                "QUIET_HOURS": "9pm-7am",
                "DATABASE_URL": "mysql://x",
                "API_TOKEN": "short",
                "HOMEVISIT_SESSION_TTL_HOURS": "-1",
            },
            env_file=None,
        )
    named = {p.split(":")[0] for p in info.value.problems}
    assert named == {
        "HOMEVISIT_TZ",
        "REMINDER_CRON",
        "QUIET_HOURS",
        "DATABASE_URL",
        "API_TOKEN",
        "HOMEVISIT_SESSION_TTL_HOURS",
    }


def test_partial_wecom_settings_name_the_missing_variable() -> None:
    env = {k: v for k, v in GOOD_WECOM.items() if k != "WECOM_TOKEN"}
    with pytest.raises(ConfigError) as info:
        load_settings(env, env_file=None)
    assert [p.split(":")[0] for p in info.value.problems] == ["WECOM_TOKEN"]


def test_wecom_aes_key_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ConfigError, match="WECOM_AES_KEY"):
        load_settings({**GOOD_WECOM, "WECOM_AES_KEY": "tooshort"}, env_file=None)


def test_complete_wecom_and_dingtalk_settings() -> None:
    s = load_settings(
        {**GOOD_WECOM, "DINGTALK_APP_KEY": "dingkey", "DINGTALK_APP_SECRET": "x" * 30},
        env_file=None,
    )
    assert s.wecom is not None and s.wecom.agent_id == 1000002
    assert s.wecom.api_base == "https://qyapi.weixin.qq.com"
    assert s.dingtalk is not None and s.dingtalk.robot_code == "dingkey"
    assert s.dingtalk.mode == "stream"


def test_secrets_are_masked_in_repr() -> None:
    s = load_settings({**GOOD_WECOM, "API_TOKEN": "super-secret-token-123"}, env_file=None)
    text = repr(s)
    assert "super-secret-token-123" not in text and GOOD_WECOM["WECOM_AES_KEY"] not in text
    assert GOOD_WECOM["WECOM_SECRET"] not in text
    assert s.api_token == Secret("super-secret-token-123")


def test_dotenv_file_is_read_and_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("HOMEVISIT_TZ=Asia/Urumqi\nQUIET_HOURS=22:00-06:30\n", encoding="utf-8")
    s = load_settings({"HOMEVISIT_TZ": "Asia/Shanghai"}, env_file=env_file)
    assert str(s.tz) == "Asia/Shanghai"
    assert (s.quiet_hours.start, s.quiet_hours.end) == (time(22), time(6, 30))
    assert s.quiet_hours.contains(time(23)) and s.quiet_hours.contains(time(5))
    assert not s.quiet_hours.contains(time(12))


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("HOMEVISIT_SESSION_TTL_HOURS", "100000000"),  # accepted before, then every turn failed
        ("HOMEVISIT_SESSION_TTL_HOURS", "99999999999"),  # a traceback at start-up before
        ("HOMEVISIT_ESCALATE_AFTER_DAYS", "3000000"),  # the job crashed on it before
        ("HOMEVISIT_VISIT_CYCLE_DAYS", "0"),
        ("HOMEVISIT_VISIT_CYCLE_DAYS", "²"),  # a digit to str.isdigit(), not to int()
        ("HOMEVISIT_CATEGORY_CYCLE_DAYS", "孤儿:²"),
        ("HOMEVISIT_CATEGORY_CYCLE_DAYS", "孤儿:99999999"),
        ("WECOM_AGENT_ID", "99999999999999999999"),
    ],
)
def test_out_of_range_numbers_name_the_variable_and_the_range(var: str, value: str) -> None:
    env = {**GOOD_WECOM, var: value}
    with pytest.raises(ConfigError) as info:
        load_settings(env, env_file=None)
    [problem] = info.value.problems
    assert problem.startswith(f"{var}: ")


def test_the_largest_values_in_range_are_usable() -> None:
    s = load_settings(
        {
            "HOMEVISIT_SESSION_TTL_HOURS": "8784",
            "HOMEVISIT_ESCALATE_AFTER_DAYS": "366",
            "HOMEVISIT_CATEGORY_CYCLE_DAYS": "孤儿:366",
        },
        env_file=None,
    )
    from datetime import UTC, datetime

    assert datetime(9000, 1, 1, tzinfo=UTC) + s.session_ttl > datetime(9000, 1, 1, tzinfo=UTC)
    assert s.escalate_after_days == 366 and s.category_cycle_days == {"孤儿": 366}
