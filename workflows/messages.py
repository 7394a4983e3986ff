"""The customer-facing texts Kartabl sends on its own, as Jinja2 templates per language and channel.

Templates live in `workflows/templates/` as `<name>.<language>.<channel>.j2` (one channel's variant) or
`<name>.<language>.j2` (every other channel). For `render(name, language=L, channel=C)` the first that
exists of these wins:

1. `<name>.<L>.<C>.j2`
2. `<name>.<L>.j2`
3. `<name>.fa.<C>.j2`
4. `<name>.fa.j2`

so a language with no templates of its own (or none given) gets Persian, and a channel with no variant of
its own (Telegram, mostly) gets the language's general text. SMS variants fit one UCS-2 part (70
characters) with a ticket reference of up to eight characters; email variants greet by name and sign off.

An admin override directory (`extra_dir`) is an overlay of the built-in directory: a file there replaces
the built-in file of the same name, and a file the built-ins lack adds a language, a channel variant or a
whole new message. The order above is applied to the merged view, so overriding `resolved.fa.j2` changes
the Persian text for Telegram (and any other channel without a variant) but not the built-in
`resolved.fa.sms.j2` or `resolved.fa.email.j2`: override those files too to change every channel.

Values each built-in template takes (pass all of them; a missing one raises `jinja2.UndefinedError`):
`ref`, `name` (the customer's name or None) and `opens` (when the desk next opens, as a sentence
says it: Jalali in Persian) everywhere, plus `url` (a survey link or None) for
`survey` and `score` (1-5) for `survey_thanks`. The output is plain text: nothing is escaped.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from jinja2 import (
    Environment,
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplatesNotFound,
)

__all__ = ["BUILTIN_DIR", "DEFAULT_LANGUAGE", "TemplateMissing", "names", "render", "template_names"]

BUILTIN_DIR = Path(__file__).with_name("templates")
#: The language of a ticket whose language is unknown, and of a language with no template for a message.
DEFAULT_LANGUAGE = "fa"

_NAME = re.compile(r"[a-z][a-z0-9_]*")
_LANGUAGE = re.compile(r"[a-z]{2,3}")
_SUFFIX = ".j2"


class TemplateMissing(LookupError):
    """No template for this message name (or none in any language the fallback order reaches)."""


def render(name: str, /, *, language: str | None, channel: str, extra_dir: Path | None = None,
           **values: object) -> str:
    """The text of message `name` for a customer writing in `language` on `channel`, filled in with
    `values`, without leading or trailing white space.

    `language` may be a tag such as "en-GB" (its primary subtag counts) or None; `channel` is a
    `ChannelKind` value such as "sms". Raises `TemplateMissing` for an unknown name, `ValueError` for a
    malformed name or channel, and `jinja2.UndefinedError` when the template uses a value not given.
    `name` is positional-only so that the customer's `name=` can be one of the `values`.
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"not a message template name: {name!r}")
    channel = str(channel).lower()
    if not _NAME.fullmatch(channel):
        raise ValueError(f"not a channel name: {channel!r}")
    template = _select(name, _language(language), channel, extra_dir)
    return template.render(**values).strip()


def names(extra_dir: Path | None = None) -> set[str]:
    """The message names there are templates for, built-in plus those in `extra_dir`."""
    return {file_name.split(".", 1)[0] for file_name in template_names(extra_dir)}


def template_names(extra_dir: Path | None = None) -> set[str]:
    """Every template file name, built-in plus those in `extra_dir` (for checks and listings)."""
    return {
        path.name
        for directory in _directories(extra_dir)
        for path in directory.glob(f"*{_SUFFIX}")
        if path.is_file() and _NAME.fullmatch(path.name.split(".", 1)[0])
    }


def _select(name: str, language: str, channel: str, extra_dir: Path | None) -> Template:
    candidates = list(dict.fromkeys([  # without repeats when the language is already the default
        f"{name}.{language}.{channel}{_SUFFIX}",
        f"{name}.{language}{_SUFFIX}",
        f"{name}.{DEFAULT_LANGUAGE}.{channel}{_SUFFIX}",
        f"{name}.{DEFAULT_LANGUAGE}{_SUFFIX}",
    ]))
    try:
        return _environment(None if extra_dir is None else Path(extra_dir)).select_template(candidates)
    except TemplatesNotFound:
        known = names(extra_dir)
        if name not in known:
            raise TemplateMissing(
                f"no message template named {name!r}; known: {', '.join(sorted(known))}") from None
        raise TemplateMissing(
            f"message {name!r} has no template for language {language!r} or {DEFAULT_LANGUAGE!r} "
            f"on channel {channel!r}; looked for {', '.join(candidates)}") from None


def _language(language: str | None) -> str:
    """The primary subtag of `language`, lower case, or the default when it is missing or malformed."""
    primary = str(language or "").strip().lower().replace("_", "-").split("-", 1)[0]
    return primary if _LANGUAGE.fullmatch(primary) else DEFAULT_LANGUAGE


def _directories(extra_dir: Path | None) -> list[Path]:
    return [BUILTIN_DIR] if extra_dir is None else [Path(extra_dir), BUILTIN_DIR]


@functools.lru_cache(maxsize=16)
def _environment(extra_dir: Path | None) -> Environment:
    # One environment per directory set, so compiled templates are cached; Jinja reloads a file whose
    # modification time changed, so an admin's edit shows without a restart.
    return Environment(
        loader=FileSystemLoader(_directories(extra_dir), encoding="utf-8"),
        undefined=StrictUndefined,
        autoescape=False,  # plain text for SMS, Telegram and text/plain email: nothing to escape
        keep_trailing_newline=False,
    )
