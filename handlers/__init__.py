"""The conversation itself: commands, the check-in flow over a form, follow-up rules.

Pure functions and small classes over `bot.core` types; no HTTP, no SQL.
"""
