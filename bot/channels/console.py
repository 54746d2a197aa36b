"""The console channel: `homevisit chat --user STAFF_NO`, a teacher's conversation in a terminal.

Reads standard input line by line, so it works interactively and with a pipe. When input is not a
terminal each line is echoed as `> line`, which makes a piped session read like a transcript.
"""

from __future__ import annotations

import asyncio
from typing import TextIO

from bot.core.ports import Conversations
from bot.core.types import InboundMessage

CHANNEL = "console"


async def run(dispatcher: Conversations, staff_no: str, stdin: TextIO, stdout: TextIO) -> None:
    interactive = stdin.isatty()
    loop = asyncio.get_running_loop()
    while True:
        if interactive:
            stdout.write("> ")
            stdout.flush()
        line = await loop.run_in_executor(None, stdin.readline)
        if not line:  # end of input
            return
        text = line.rstrip("\r\n")
        if not interactive:
            stdout.write(f"> {text}\n")
        for reply in await dispatcher.handle(InboundMessage(CHANNEL, staff_no, text)):
            stdout.write(f"{reply}\n\n")
        stdout.flush()
