"""Telegram: the customer bot, and the desk where agents work every ticket from a group."""

import os

# python-telegram-bot 22 warns on every read of a duration (RetryAfter.retry_after, a voice's length)
# unless told to return them as timedelta, its behaviour from version 23 on; the channel handles both.
os.environ.setdefault("PTB_TIMEDELTA", "true")
