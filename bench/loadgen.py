"""The load generator: an aiohttp client in its own process (started by `bench/run.py`).

`--connections` workers share one connection pool of that size (keep-alive). The teachers are
split among the workers; each worker steps its teachers round-robin, one message each, so every
teacher's messages form the real check-in sequence in order and never overlap:

    家访 → 1 → 3 1 1 2 1 1 无 → 提交 → 家访 → ...

(with the default form: 电话, 好, 是, 否, 稳定, 融洽, 无 — the short path to the summary).
With `--check` every reply is checked: HTTP 200, a `replies` list, not the apology/"unavailable"
text, and the marker expected for that step (the list, a question, the summary, "已提交"); the
next message is chosen from the reply (question N gets answer N), so a teacher left mid-visit by
an earlier run resumes its draft. A teacher whose reply is unexpected starts over with "家访".
Without `--check` (the floors) the same texts are sent in a fixed cycle.

The first `--warmup` seconds are run but not counted. Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

try:  # the texts a failed turn answers with; the bench runs from the project's venv
    from handlers.texts import APOLOGY, UNAVAILABLE
except ImportError:  # pragma: no cover - the floor servers do not need them
    APOLOGY = "抱歉，系统刚才出了点问题"
    UNAVAILABLE = "抱歉，系统暂时繁忙"

ANSWERS = ("3", "1", "1", "2", "1", "1", "1", "1", "1", "无")
STEPS: tuple[tuple[str, str], ...] = (
    ("家访", "回复序号"),  # the student list
    ("1", "【第1题/"),  # picked: the visit starts at question 1
    *((a, "【第") for a in ANSWERS[:-1]),  # each answer: the next question
    (ANSWERS[-1], "请核对"),  # the last answer: the summary
    ("提交", "已提交"),
)


@dataclass
class Teacher:
    staff_no: str
    step: int = 0  # index into STEPS (unchecked mode: the floors)
    text: str = "家访"  # the next message (checked mode: chosen from the last reply)
    sent: int = 0
    kind: str = "list"  # what the next message is: list, pick, answer or submit


QUESTION = re.compile(r"【第(\d+)题")
# 家访 and 提交 have one expected answer; any other message (the pick or an answer) leads to a
# question or, for a resumed draft that was complete, to the summary
EXPECT = {"家访": "回复序号", "提交": "已提交"}


def next_text(sent: str, reply: str) -> str | None:
    """The teacher's next message given the bot's reply to `sent`, or None if unexpected.

    Reply-driven, so a teacher whose session was left mid-visit (a previous run) carries on:
    "1" then resumes the draft at its question, and the answer for that question is sent.
    """
    if sent not in EXPECT and not ("【第" in reply or "请核对" in reply):
        return None
    if sent in EXPECT and EXPECT[sent] not in reply:
        return None
    if "已提交" in reply:
        return "家访"
    if "请核对" in reply:
        return "提交"
    m = QUESTION.search(reply)
    if m:
        n = int(m.group(1))
        return ANSWERS[n - 1] if 1 <= n <= len(ANSWERS) else None
    if "回复序号" in reply:
        return "1"
    return None


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)
    by_kind: dict[str, list[float]] = field(default_factory=dict)
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    error_examples: dict[str, str] = field(default_factory=dict)
    checkins: int = 0

    def error(self, kind: str, example: str) -> None:
        self.errors[kind] += 1
        self.error_examples.setdefault(kind, example[:300])


async def worker(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    teachers: list[Teacher],
    *,
    run_id: str,
    check: bool,
    message_ids: bool,
    t_measure: float,
    t_end: float,
    stats: Stats,
) -> None:
    i = 0
    while True:
        now = time.perf_counter()
        if now >= t_end:
            return
        t = teachers[i % len(teachers)]
        i += 1
        text = t.text if check else STEPS[t.step][0]
        body: dict[str, str] = {"user": t.staff_no, "text": text}
        if message_ids:
            body["message_id"] = f"{run_id}-{t.staff_no}-{t.sent}"
        t.sent += 1
        start = time.perf_counter()
        status, payload, err = 0, "", ""
        try:
            async with session.post(url, json=body, headers=headers) as resp:
                status = resp.status
                payload = await resp.text()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            err = f"{type(exc).__name__}: {exc}"
        end = time.perf_counter()
        counted = start >= t_measure and end <= t_end
        problem, nxt = "", None
        if err:
            problem = "connection error"
        elif status != 200:
            problem = f"HTTP {status}"
        elif check:
            try:
                replies = json.loads(payload)["replies"]
                joined = "\n".join(replies)
            except (ValueError, KeyError, TypeError):
                problem, joined = "bad JSON", ""
            if not problem:
                if APOLOGY[:12] in joined:
                    problem = "apology reply"
                elif UNAVAILABLE[:12] in joined:
                    problem = "unavailable reply"
                else:
                    nxt = next_text(text, joined)
                    if nxt is None:
                        problem = f"unexpected reply to {text!r}"
        if problem:
            t.step, t.text, t.kind = 0, "家访", "list"  # start this teacher over
            if counted:
                stats.error(problem, err or payload)
            continue
        kind = t.kind
        t.step = (t.step + 1) % len(STEPS)
        if nxt is not None:
            t.text = nxt
        next_text_ = t.text if check else STEPS[t.step][0]
        t.kind = {"家访": "list", "提交": "submit"}.get(next_text_) or (
            "pick" if kind == "list" else "answer"
        )
        if counted:
            stats.ok += 1
            stats.latencies.append(end - start)
            stats.by_kind.setdefault(kind, []).append(end - start)
            if text == "提交":
                stats.checkins += 1


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


async def run(args: argparse.Namespace) -> dict[str, object]:
    url = args.url.rstrip("/") + "/api/messages"
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    teachers = [Teacher(f"{args.prefix}{n:05d}") for n in range(1, args.teachers + 1)]
    groups = [teachers[w :: args.connections] for w in range(args.connections)]
    groups = [g for g in groups if g]
    stats = Stats()
    run_id = uuid.uuid4().hex[:8]
    connector = aiohttp.TCPConnector(limit=args.connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        t0 = time.perf_counter()
        t_measure = t0 + args.warmup
        t_end = t_measure + args.seconds
        await asyncio.gather(
            *(
                worker(
                    session,
                    url,
                    headers,
                    g,
                    run_id=run_id,
                    check=args.check,
                    message_ids=args.message_ids,
                    t_measure=t_measure,
                    t_end=t_end,
                    stats=stats,
                )
                for g in groups
            )
        )
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    lat = sorted(stats.latencies)
    return {
        "requests_ok": stats.ok,
        "errors": dict(stats.errors),
        "error_examples": stats.error_examples,
        "checkins_completed": stats.checkins,
        "seconds": args.seconds,
        "rps": stats.ok / args.seconds,
        "p50_ms": percentile(lat, 50) * 1000,
        "p90_ms": percentile(lat, 90) * 1000,
        "p99_ms": percentile(lat, 99) * 1000,
        "max_ms": (lat[-1] * 1000) if lat else float("nan"),
        "by_kind": {
            kind: {
                "n": len(values),
                "p50_ms": percentile(sorted(values), 50) * 1000,
                "p99_ms": percentile(sorted(values), 99) * 1000,
            }
            for kind, values in sorted(stats.by_kind.items())
        },
        "client_cpu_s": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
        "client_pid": os.getpid(),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="e.g. http://127.0.0.1:8080")
    p.add_argument("--token", default="")
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--warmup", type=float, default=2)
    p.add_argument("--connections", type=int, default=20)
    p.add_argument("--teachers", type=int, default=200)
    p.add_argument("--prefix", default="BT")
    p.add_argument("--timeout", type=float, default=30)
    p.add_argument("--check", action="store_true", help="check each reply is the expected step")
    p.add_argument("--message-ids", action="store_true", help="send a unique message_id")
    args = p.parse_args()
    result = asyncio.run(run(args))
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
