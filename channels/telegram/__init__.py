"""Telegram: the customer bot, and the desk where agents work every ticket from a group."""
