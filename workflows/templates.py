"""The texts Kartabl sends on its own, in Persian and English; the ticket's language picks one."""

from __future__ import annotations

ACKNOWLEDGEMENT = {
    "fa": ("سلام{name}،\n"
           "پیام شما رسید و با شمارهٔ پیگیری {ref} ثبت شد. همکاران ما به‌زودی پاسخ می‌دهند.\n"
           "برای پیگیری، به همین پیام پاسخ دهید."),
    "en": ("Hello{name},\n"
           "we received your message and opened request {ref}. One of us will answer soon.\n"
           "To add anything, just reply to this message."),
}


def acknowledgement(ref: str, name: str | None, language: str | None) -> str:
    """The automatic answer to a new ticket, naming its reference."""
    lang = "en" if language == "en" else "fa"  # Persian-first: an unknown language gets Persian
    greeting = f" {name}" if name else ""
    return ACKNOWLEDGEMENT[lang].format(name=greeting, ref=ref)

GREETING = {
    "fa": ("سلام! به پشتیبانی خوش آمدید.\n"
           "سؤال یا مشکلتان را همین‌جا بنویسید؛ می‌توانید عکس، فایل یا پیام صوتی هم بفرستید. "
           "همکاران ما در اولین فرصت پاسخ می‌دهند."),
    "en": ("Hello, and welcome to support.\n"
           "Write your question or problem here; photos, files and voice messages are welcome too. "
           "One of us will answer as soon as we can."),
}


def greeting(language: str | None) -> str:
    """The bot's answer to /start."""
    return GREETING["en" if language == "en" else "fa"]
