"""The project's exception tree.

HomevisitError
├── ConfigError        bad settings or a broken form / calendar file: start-up stops, naming it
├── InvalidAnswer      a teacher's answer does not fit the question: re-ask with the reason
├── RosterError        a roster file is wrong: nothing imported; each problem names file,
│                      row and column
├── StorageUnavailable the database does not answer: the user gets an apology, the web layer a 503
├── SendError          a platform did not take an outbound message: retried, or recorded as failed
├── DuplicateMessage   a platform delivered a message again: roll the turn back, repeat the reply
└── ConcurrentUpdate   the conversation kept changing under the turn (another process wrote the
                       same session, twice in a row): the turn is rolled back, the user gets an
                       apology

Anything else raised inside a turn is unexpected: it is logged once (without personal data) and the
teacher gets a short apology; the transaction is rolled back so nothing is half-written.
"""

from __future__ import annotations


class HomevisitError(Exception):
    """Base of every error the project raises on purpose."""


class ConfigError(HomevisitError):
    """Settings, form or calendar are unusable. `problems` lists every one found."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class InvalidAnswer(HomevisitError):
    """The answer does not fit the question; `reason` is shown to the teacher."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class RosterError(HomevisitError):
    """The roster cannot be imported. `problems`: lines like `students.csv 第3行 学籍号: 重复`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class StorageUnavailable(HomevisitError):
    """The database could not be reached or timed out."""


class SendError(HomevisitError):
    """A platform refused or failed to take a message.

    `permanent`: retrying cannot help (no such recipient, app not visible to the user); the
    outbox records the failure and stops. Otherwise the outbox retries with backoff, no sooner
    than `retry_after` seconds when the platform said so (rate limits).
    """

    def __init__(
        self, reason: str, *, permanent: bool = False, retry_after: float | None = None
    ) -> None:
        self.reason = reason
        self.permanent = permanent
        self.retry_after = retry_after
        super().__init__(reason)


class DuplicateMessage(HomevisitError):
    """This sender sent this message id before: the turn must not take effect again.

    The sender is part of the key: a message id is the client's word (the JSON channel lets the
    caller choose it), and another user's message under a reused id is a new message.
    """

    def __init__(self, channel: str, user_id: str, message_id: str) -> None:
        self.channel = channel
        self.user_id = user_id
        self.message_id = message_id
        super().__init__(channel)  # (never the ids: they may name a teacher)


class ConcurrentUpdate(HomevisitError):
    """Another process changed the conversation between our read and our write.

    A store raises it inside a turn; the turn runner runs the turn once more and lets it
    through only if that happens again.
    """
