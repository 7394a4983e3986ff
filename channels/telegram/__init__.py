"""Telegram: the customer bot and the agents 'desk in a group."""
