"""Routing rules: the admins' ordered TOML rules, checked when loaded and applied to a message's facts.

A rule file is a list of `[[rule]]` tables, each with a `name`, a `[rule.when]` table of conditions and
a `[rule.then]` table of actions (see `workflows/workflows.toml`). Rules run in file order. Every
rule whose conditions all hold fires: its single-valued actions (department, priority, assign,
reply_template) replace earlier ones, its tags are added to earlier ones, review is kept once any rule
asks for it, and a rule with `stop = true` ends the walk.

Conditions (all of a rule's must hold; a list holds when any of its values does; no conditions hold
for every message):
- channel: email, sms, telegram, loopback.
- sender: patterns on the sender's address (see `Facts.sender`): "sara@example.ir" (one address),
  "@bigcorp.ir" or "*@bigcorp.ir" (a domain), "+98912*" (phone numbers in international form,
  with glob wildcards * ? [..]), or "kind:glob" on the whole address ("telegram:12345").
- text_any / subject_any: keywords. A keyword matches as a substring of the folded text (see
  `workflows.persian.fold`), not as a whole word: Persian attaches its suffixes and prefixes
  (فاکتورها، فاکتورم، می‌خواهم), so whole-word matching would miss most real mentions. For word
  boundaries, write a text_regex with \\b. text_* look at the body only and subject_* at the subject.
- text_regex: regular expressions searched in the folded body, case-insensitively; the pattern's
  Persian letters and digits are folded too. The folded body is one line (whitespace collapsed).
- language: "fa" also matches "fa-IR". customer_tags: any of the customer's tags (folded).
- has_attachment, business_hours, first_message: true or false.

Guard against slow patterns: `re` has no time limit, so the text fields are cut to their first
`MAX_TEXT` characters before matching, and a pattern that repeats a group which itself repeats
(`(a+)+`, the kind that takes exponential time) is refused at load. What remains are polynomial
patterns with overlapping repeats side by side, such as `\\d+\\s*\\d+x`, which can run for minutes on a
hostile 20,000-character message (a long run of digits): write patterns that begin with a literal
word (سفارش\\s*\\d+), as real rules do.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import regex

from gateway.domain import AddressKind, ChannelKind, Priority
from workflows.persian import fold, fold_letters

try:  # the parser behind `re`: private, so the nested-repeat check is skipped where it is missing
    from re import _constants as _sre
    from re import _parser as _sre_parse
except ImportError:  # pragma: no cover
    _sre = _sre_parse = None

#: How much of a message's body and subject the rules see (characters, before and after folding).
MAX_TEXT = 20_000
#: A pattern search gives up after this long (the `regex` package's timeout): no message can stall a
#: worker, however an admin's pattern backtracks.
REGEX_TIMEOUT_S = 0.2

CONDITIONS = ("channel", "sender", "subject_any", "text_any", "text_regex", "language", "customer_tags",
              "has_attachment", "business_hours", "first_message")
ACTIONS = ("department", "priority", "tags", "assign", "reply_template", "review", "stop")
RULE_KEYS = ("name", "when", "then")
ASSIGN_STRATEGIES = ("round_robin", "least_open", "manual")
_USERNAME = re.compile(r"@[A-Za-z0-9_]{1,64}")


class RuleError(ValueError):
    """A rule file that cannot be used. Its message is one line: `rules.toml:14: rule "x": reason`
    (without the line number when the rule's position in the file is unknown)."""

    def __init__(self, source: str, line: int | None, reason: str, rule: str | None = None) -> None:
        self.source, self.line, self.reason, self.rule = source, line, reason, rule
        where = f"{source}:{line}" if line is not None else source
        about = f"rule {_show(rule)}: " if rule is not None else ""
        super().__init__(f"{where}: {about}{reason}")


@dataclasses.dataclass(frozen=True, slots=True)
class Facts:
    """What rules may look at in one inbound message.

    `sender` is the sender's address as `gateway.addresses.Address` writes it: kind, a colon, and the
    canonical value: "email:sara@example.ir" (lower case), "phone:+989121234567" (E.164),
    "telegram:123456789" (the numeric user id). `language` is a code such as "fa" or "en", or None when
    unknown. `business_hours` is whether the message arrived inside the department's business hours
    (the caller works that out); `first_message` is whether it opened a new ticket. The defaults
    describe a new message without attachments, inside business hours.
    """

    channel: str
    sender: str = ""
    subject: str = ""
    text: str = ""
    language: str | None = None
    customer_tags: tuple[str, ...] = ()
    has_attachment: bool = False
    business_hours: bool = True
    first_message: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class Actions:
    """What a rule does when it fires; None (or empty, or False) where it leaves things as they are."""

    department: str | None = None
    priority: Priority | None = None
    tags: tuple[str, ...] = ()
    assign: str | None = None  # round_robin, least_open, manual, or "@username"
    reply_template: str | None = None
    review: bool = False
    stop: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class SenderPattern:
    """One `sender` value: `glob` is matched against the whole address when `kind` is None, else
    against the value of addresses of that kind."""

    written: str
    kind: AddressKind | None
    glob: str

    def matches(self, kind: str, value: str, whole: str) -> bool:
        if self.kind is None:
            return fnmatch.fnmatchcase(whole, self.glob)
        return kind == self.kind and fnmatch.fnmatchcase(value, self.glob)


@dataclasses.dataclass(frozen=True, slots=True)
class Condition:
    """One `when` entry: `written` as in the file (for explanations), `values` ready to match."""

    key: str
    written: tuple[Any, ...]
    values: tuple[Any, ...]

    def check(self, seen: _Seen) -> tuple[bool, str]:
        """Whether the message meets it, and a line saying why (or why not)."""
        return _CHECKS[self.key](self, seen)


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    """One `[[rule]]`: its conditions in file order, its actions, and where it and its actions are."""

    name: str
    conditions: tuple[Condition, ...]
    actions: Actions
    line: int | None = None  # of its [[rule]] header
    action_lines: tuple[tuple[str, int | None], ...] = ()

    def match(self, seen: _Seen) -> tuple[bool, tuple[str, ...]]:
        """(True, why each condition holds) or (False, (the first condition that does not,))."""
        reasons = []
        for condition in self.conditions:
            ok, why = condition.check(seen)
            if not ok:
                return False, (why,)
            reasons.append(why)
        return True, tuple(reasons) or ("no conditions: matches every message",)

    def line_of(self, action: str) -> int | None:
        return dict(self.action_lines).get(action, self.line)


@dataclasses.dataclass(frozen=True, slots=True)
class Firing:
    """A rule that fired: its place in the file (1-based `position`), why, and what it did."""

    rule: str
    position: int
    line: int | None
    why: tuple[str, ...]  # one line per condition: `text_any: "فاکتور" in text`
    actions: Actions


@dataclasses.dataclass(frozen=True, slots=True)
class Miss:
    """A rule that did not fire, and the condition that failed (or the rule that stopped the walk)."""

    rule: str
    position: int
    line: int | None
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """What the rules decided for one message. Fields left None (or empty) were not set by any rule:
    the ticket keeps what it had."""

    department: str | None = None
    priority: Priority | None = None
    tags: tuple[str, ...] = ()
    assign: str | None = None
    reply_template: str | None = None
    review: bool = False
    fired: tuple[Firing, ...] = ()
    missed: tuple[Miss, ...] = ()
    source: str = "rules.toml"

    def explain(self) -> list[str]:
        """Lines for `kartabl rules test`: every rule in file order with what it did or why it did not
        fire, then the result."""
        steps: list[tuple[int, list[str]]] = []
        so_far: dict[str, Any] = {}
        for firing in self.fired:
            head = f"#{firing.position} {_show(firing.rule)}{self._at(firing.line)} fired: " + "; ".join(firing.why)
            steps.append((firing.position, [head, "  then: " + _describe(firing.actions, so_far)]))
        for miss in self.missed:
            steps.append((miss.position, [f"#{miss.position} {_show(miss.rule)}{self._at(miss.line)} {miss.reason}"]))
        lines = [line for _, block in sorted(steps, key=lambda step: step[0]) for line in block]
        if not steps:
            lines.append("no rules")
        return lines + ["result: " + (_describe(self._as_actions(), {}, result=True) or "no changes")]

    def _at(self, line: int | None) -> str:
        return f" ({self.source}:{line})" if line is not None else ""

    def _as_actions(self) -> Actions:
        return Actions(self.department, self.priority, self.tags, self.assign, self.reply_template, self.review)


@dataclasses.dataclass(frozen=True, slots=True)
class RuleSet:
    """A loaded rule file. Build it with `load_rules`."""

    rules: tuple[Rule, ...] = ()
    source: str = "rules.toml"

    def evaluate(self, facts: Facts) -> Decision:
        """Walks the rules in order and combines the actions of those that fire. Never raises: facts of
        the wrong type count as unknown, and long texts are cut to `MAX_TEXT` characters."""
        seen = _Seen.of(facts)
        fired: list[Firing] = []
        missed: list[Miss] = []
        single: dict[str, Any] = {}
        tags: list[str] = []
        review = False
        stopped_by: str | None = None
        for position, rule in enumerate(self.rules, 1):
            if stopped_by is not None:
                missed.append(Miss(rule.name, position, rule.line, f"not reached: {_show(stopped_by)} stops"))
                continue
            ok, why = rule.match(seen)
            if not ok:
                missed.append(Miss(rule.name, position, rule.line, "did not fire: " + why[0]))
                continue
            actions = rule.actions
            fired.append(Firing(rule.name, position, rule.line, why, actions))
            for name in ("department", "priority", "assign", "reply_template"):
                if getattr(actions, name) is not None:
                    single[name] = getattr(actions, name)
            tags.extend(tag for tag in actions.tags if tag not in tags)
            review = review or actions.review
            if actions.stop:
                stopped_by = rule.name
        return Decision(**single, tags=tuple(tags), review=review, fired=tuple(fired), missed=tuple(missed),
                        source=self.source)

    def departments_named(self) -> frozenset[str]:
        return frozenset(r.actions.department for r in self.rules if r.actions.department)

    def templates_named(self) -> frozenset[str]:
        return frozenset(r.actions.reply_template for r in self.rules if r.actions.reply_template)

    def agents_named(self) -> frozenset[str]:
        """Usernames (without the @) of the agents rules assign to by name."""
        return frozenset(r.actions.assign[1:] for r in self.rules if (r.actions.assign or "").startswith("@"))

    def check_references(self, *, departments: Iterable[str] | None = None, templates: Iterable[str] | None = None,
                         agents: Iterable[str] | None = None) -> None:
        """Raises RuleError at the first action naming a department, template or agent (username,
        case-insensitive) that is not among those given; a None list is not checked."""
        known_departments = None if departments is None else set(departments)
        known_templates = None if templates is None else set(templates)
        known_agents = None if agents is None else {a.lstrip("@").casefold() for a in agents}
        for rule in self.rules:
            a = rule.actions
            if known_departments is not None and a.department and a.department not in known_departments:
                raise RuleError(self.source, rule.line_of("department"), f"no department named {_show(a.department)}",
                                rule.name)
            if known_templates is not None and a.reply_template and a.reply_template not in known_templates:
                raise RuleError(self.source, rule.line_of("reply_template"),
                                f"no reply template named {_show(a.reply_template)}", rule.name)
            if (known_agents is not None and a.assign and a.assign.startswith("@")
                    and a.assign[1:].casefold() not in known_agents):
                raise RuleError(self.source, rule.line_of("assign"), f"no agent with username {_show(a.assign)}",
                                rule.name)


def load_rules(text: str, source: str = "rules.toml") -> RuleSet:
    """Parses and checks a rule file; `source` names it in error messages. Raises RuleError.

    Top-level tables other than the rules (a workflow file's `[calendar]` or `[sla]`) are left to
    whoever reads them; any other top-level key is refused, and so are `[rule]` and `[[rules]]`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(exc, text, source) from None
    lines = _Lines(text)
    for key, value in data.items():
        if key != "rule" and not isinstance(value, dict):
            raise RuleError(source, lines.top_key(key),
                            f"unknown top-level key {_show(key)} (rules are [[rule]] tables)")
    tables = data.get("rule", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        got = "a table" if isinstance(tables, dict) else _show(tables)
        raise RuleError(source, lines.top_key("rule"), f"rules must be [[rule]] tables (double brackets), got {got}")
    lines.expect_rules(len(tables))
    rules: list[Rule] = []
    first_seen: dict[str, Rule] = {}
    for index, table in enumerate(tables):
        rule = _RuleReader(source, lines, index, table).read()
        earlier = first_seen.get(fold(rule.name))
        if earlier is not None:
            at = f" (first at line {earlier.line})" if earlier.line is not None else ""
            raise RuleError(source, lines.key(index, "name"), f"duplicate name{at}", rule.name)
        first_seen[fold(rule.name)] = rule
        rules.append(rule)
    return RuleSet(tuple(rules), source)


# --- reading a rule -------------------------------------------------------------------------------

class _RuleReader:
    def __init__(self, source: str, lines: _Lines, index: int, table: dict[str, Any]) -> None:
        self.source, self.lines, self.index, self.table = source, lines, index, table
        self.name: str | None = None

    def fail(self, reason: str, key: str | None = None, section: str = "rule") -> RuleError:
        line = self.lines.key(self.index, key, section) if key else self.lines.rule(self.index)
        return RuleError(self.source, line, reason, self.name)

    def read(self) -> Rule:
        label = f"rule #{self.index + 1}"
        if "name" not in self.table:
            raise RuleError(self.source, self.lines.rule(self.index), f"{label} has no name")
        name = self.table["name"]
        if not isinstance(name, str) or not name.strip():
            raise self.fail(f"{label}: name must be a non-empty string, got {_show(name)}", "name")
        self.name = name.strip()
        for key in self.table:
            if key not in RULE_KEYS:
                raise self.fail(f"unknown key {_show(key)} (known: {', '.join(RULE_KEYS)})", key)
        when = self.section("when")
        then = self.section("then")
        conditions = tuple(self.condition(key, value) for key, value in when.items())
        if not then:
            raise self.fail("has no actions (add a [rule.then] table)", "then" if "then" in self.table else None)
        for key in then:
            if key not in ACTIONS:
                raise self.fail(f"unknown action {_show(key)} (known: {', '.join(ACTIONS)})", key, "then")
        actions = Actions(**{key: self.action(key, value) for key, value in then.items()})
        action_lines = tuple((key, self.lines.key(self.index, key, "then")) for key in then)
        return Rule(self.name, conditions, actions, self.lines.rule(self.index), action_lines)

    def section(self, key: str) -> dict[str, Any]:
        value = self.table.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(f"{key} must be a table, got {_show(value)}", key)
        return value

    def strings(self, key: str, value: Any, section: str) -> tuple[str, ...]:
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise self.fail(f"{key} must be a string or a list of strings, got {_show(value)}", key, section)
        if not values:
            raise self.fail(f"{key} is an empty list", key, section)
        for v in values:
            if not v.strip():
                raise self.fail(f"{key} has an empty value {_show(v)}", key, section)
        return tuple(v.strip() for v in values)

    def boolean(self, key: str, value: Any, section: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(f"{key} must be true or false, got {_show(value)}", key, section)
        return value

    def condition(self, key: str, value: Any) -> Condition:
        if key not in CONDITIONS:
            raise self.fail(f"unknown condition {_show(key)} (known: {', '.join(CONDITIONS)})", key, "when")
        if key in ("has_attachment", "business_hours", "first_message"):
            flag = self.boolean(key, value, "when")
            return Condition(key, (flag,), (flag,))
        written = self.strings(key, value, "when")
        return Condition(key, written, tuple(self.prepare(key, v) for v in written))

    def prepare(self, key: str, value: str) -> Any:
        if key == "channel":
            if value.lower() not in tuple(ChannelKind):
                raise self.fail(f"channel must be {'|'.join(ChannelKind)}, got {_show(value)}", key, "when")
            return value.lower()
        if key == "sender":
            pattern = _sender_pattern(value)
            if pattern is None:
                raise self.fail(f"sender {_show(value)} is not an email address, a domain (@example.ir), a phone "
                                "number in international form (+98912*) or kind:value", key, "when")
            return pattern
        if key == "text_regex":
            return self.regex(value)
        if key == "language":
            return value.lower().replace("_", "-")
        folded = fold(value)  # subject_any, text_any, customer_tags
        if not folded:
            raise self.fail(f"{key} has an empty value {_show(value)}", key, "when")
        return folded

    def regex(self, pattern: str) -> regex.Pattern[str]:
        try:
            re.compile(pattern)  # first as written, so that an error's position is the admin's
            compiled = regex.compile(fold_letters(pattern), regex.IGNORECASE | regex.V0)
        except (re.error, regex.error) as exc:
            raise self.fail(f"text_regex {_show(pattern)} is not a valid regular expression: {exc}",
                            "text_regex", "when") from None
        if _repeats_a_repeat(compiled.pattern):
            raise self.fail(f"text_regex {_show(pattern)} repeats a group that itself repeats, like (a+)+, which can "
                            "take forever on some messages; use a possessive a++ or an atomic group (?>...) inside",
                            "text_regex", "when")
        return compiled

    def action(self, key: str, value: Any) -> Any:
        if key in ("review", "stop"):
            return self.boolean(key, value, "then")
        if key == "tags":
            return tuple(dict.fromkeys(self.strings(key, value, "then")))
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"{key} must be a non-empty string, got {_show(value)}", key, "then")
        value = value.strip()
        if key == "priority":
            if value.lower() not in tuple(Priority):
                raise self.fail(f"priority must be {'|'.join(Priority)}, got {_show(value)}", key, "then")
            return Priority(value.lower())
        if key == "assign" and value not in ASSIGN_STRATEGIES and not _USERNAME.fullmatch(value):
            raise self.fail(f"assign must be {'|'.join(ASSIGN_STRATEGIES)} or \"@username\", got {_show(value)}",
                            key, "then")
        return value


def _sender_pattern(written: str) -> SenderPattern | None:
    text = fold_letters(written).strip().lower()
    kind, colon, rest = text.partition(":")
    if colon and kind in tuple(AddressKind):
        return SenderPattern(written, None, text) if rest else None
    if "@" in text:
        if any(ch.isspace() for ch in text):
            return None
        return SenderPattern(written, AddressKind.EMAIL, "*" + text if text.startswith("@") else text)
    phone = re.sub(r"[\s().-]", "", text)
    if re.fullmatch(r"\+[0-9*?\[\]]+", phone):
        return SenderPattern(written, AddressKind.PHONE, phone)
    return None


def _repeats_a_repeat(pattern: str) -> bool:
    """Whether the pattern repeats (more than once) something that contains a repeat of variable length:
    the shape behind exponential backtracking. Possessive repeats and atomic groups give nothing back,
    so what is inside them is not counted."""
    if _sre_parse is None:  # pragma: no cover
        return False
    try:
        return _nested(_sre_parse.parse(pattern), inside=False)
    except (AttributeError, TypeError, ValueError):  # pragma: no cover - the private parser changed shape
        return False


def _nested(items: Any, inside: bool) -> bool:
    for op, av in items:
        if op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT):
            low, high, body = av
            if inside and low != high:
                return True
            if _nested(body, inside or high > 1):
                return True
        elif op in (getattr(_sre, "POSSESSIVE_REPEAT", None), getattr(_sre, "ATOMIC_GROUP", None)):
            if any(_nested(child, False) for child in _subpatterns(av)):
                return True
        elif any(_nested(child, inside) for child in _subpatterns(av)):
            return True
    return False


def _subpatterns(av: Any) -> Iterator[Any]:
    if isinstance(av, _sre_parse.SubPattern):
        yield av
    elif isinstance(av, (tuple, list)):
        for item in av:
            yield from _subpatterns(item)


def _syntax_error(exc: tomllib.TOMLDecodeError, text: str, source: str) -> RuleError:
    message = str(exc)
    found = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
    if found:
        return RuleError(source, int(found.group(1)),
                         f"TOML syntax error: {message[:found.start()]} (column {found.group(2)})")
    found = re.search(r"\s*\(at end of document\)$", message)
    if found:
        last = text.rstrip().count("\n") + 1  # the last line with anything on it
        return RuleError(source, last, f"TOML syntax error: {message[:found.start()]} (at end of file)")
    return RuleError(source, None, f"TOML syntax error: {message}")


# --- matching -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class _Seen:
    """A message's facts as rules compare them: coerced, cut and folded once."""

    channel: str
    sender: str
    sender_kind: str
    sender_value: str
    subject: str
    text: str
    language: str | None
    tags: tuple[str, ...]
    flags: Mapping[str, bool | None]

    @classmethod
    def of(cls, facts: Any) -> _Seen:
        sender = _string(getattr(facts, "sender", "")).strip().lower()
        kind, _, value = sender.partition(":")
        language = _string(getattr(facts, "language", None)).strip().lower().replace("_", "-") or None
        tags = getattr(facts, "customer_tags", ())
        tags = (tags,) if isinstance(tags, str) else tags if isinstance(tags, (tuple, list, set, frozenset)) else ()
        flags = {}
        for name in ("has_attachment", "business_hours", "first_message"):
            flag = getattr(facts, name, None)
            flags[name] = flag if isinstance(flag, bool) else None
        return cls(
            channel=_string(getattr(facts, "channel", "")).strip().lower(),
            sender=sender, sender_kind=kind, sender_value=value,
            subject=_cut(getattr(facts, "subject", "")), text=_cut(getattr(facts, "text", "")),
            language=language, tags=tuple(fold(t) for t in tags if isinstance(t, str) and t.strip()), flags=flags)


def _string(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _cut(value: Any) -> str:
    return fold(_string(value)[:MAX_TEXT])[:MAX_TEXT]


def _check_channel(c: Condition, seen: _Seen) -> tuple[bool, str]:
    if seen.channel in c.values:
        return True, f"channel: {_show(seen.channel)}"
    return False, f"channel: {_show(seen.channel)}, not {_either(c.written)}"


def _check_sender(c: Condition, seen: _Seen) -> tuple[bool, str]:
    for pattern in c.values:
        if pattern.matches(seen.sender_kind, seen.sender_value, seen.sender):
            return True, f"sender: {_show(seen.sender)} matches {_show(pattern.written)}"
    return False, f"sender: {_show(seen.sender)} matches none of {_list(c.written)}"


def _keywords(where: str) -> Any:
    def check(c: Condition, seen: _Seen) -> tuple[bool, str]:
        haystack = getattr(seen, where)
        for written, keyword in zip(c.written, c.values):
            if keyword in haystack:
                return True, f"{c.key}: {_show(written)} in {where}"
        return False, f"{c.key}: none of {_list(c.written)} in {where}"
    return check


def _check_regex(c: Condition, seen: _Seen) -> tuple[bool, str]:
    for written, pattern in zip(c.written, c.values):
        try:
            found = pattern.search(seen.text, timeout=REGEX_TIMEOUT_S)
        except TimeoutError:  # a pattern that backtracks without end on this text: no match, and say so
            return False, f"text_regex: {_show(written)} gave up after {REGEX_TIMEOUT_S}s on this text"
        if found:
            return True, f"text_regex: {_show(written)} found {_show(_excerpt(found.group(0)))}"
    return False, f"text_regex: {_either(c.written)} found nothing in text"


def _check_language(c: Condition, seen: _Seen) -> tuple[bool, str]:
    if seen.language is not None:
        for want in c.values:
            if seen.language == want or seen.language.startswith(want + "-"):
                return True, f"language: {_show(seen.language)}"
    return False, f"language: {_show(seen.language) if seen.language else 'unknown'}, not {_either(c.written)}"


def _check_tags(c: Condition, seen: _Seen) -> tuple[bool, str]:
    for written, tag in zip(c.written, c.values):
        if tag in seen.tags:
            return True, f"customer_tags: {_show(written)}"
    has = f"the customer has {_list(seen.tags)}" if seen.tags else "the customer has no tags"
    return False, f"customer_tags: none of {_list(c.written)} ({has})"


def _check_flag(c: Condition, seen: _Seen) -> tuple[bool, str]:
    want, got = c.values[0], seen.flags[c.key]
    if got is want:
        return True, f"{c.key}: {_toml(got)}"
    return False, f"{c.key}: {'unknown' if got is None else _toml(got)}, rule wants {_toml(want)}"


_CHECKS = {
    "channel": _check_channel,
    "sender": _check_sender,
    "subject_any": _keywords("subject"),
    "text_any": _keywords("text"),
    "text_regex": _check_regex,
    "language": _check_language,
    "customer_tags": _check_tags,
    "has_attachment": _check_flag,
    "business_hours": _check_flag,
    "first_message": _check_flag,
}


# --- explaining -----------------------------------------------------------------------------------

def _describe(actions: Actions, so_far: dict[str, Any], result: bool = False) -> str:
    """Actions in the rule file's own syntax; `so_far` (updated) notes what an action overrides."""
    parts = []
    for name in ("department", "priority", "assign", "reply_template"):
        value = getattr(actions, name)
        if value is None:
            continue
        before = so_far.get(name)
        note = f" (was {_show(str(before))})" if before is not None and before != value else ""
        parts.append(f"{name} = {_show(str(value))}{note}")
        so_far[name] = value
    if actions.tags:
        parts.append(f"tags {'=' if result else '+='} [{_list(actions.tags)}]")
    if actions.review:
        parts.append("review = true")
    if actions.stop:
        parts.append("stop = true")
    return ", ".join(parts)


def _show(value: Any) -> str:
    """A value as one line of TOML-like text: strings quoted and escaped, so a message stays one line."""
    if isinstance(value, bool):
        return _toml(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)[1:-1]


def _toml(flag: bool) -> str:
    return "true" if flag else "false"


def _list(values: Iterable[str]) -> str:
    return ", ".join(_show(v) for v in values)


def _either(values: Iterable[str]) -> str:
    return " or ".join(_show(v) for v in values)


def _excerpt(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


# --- where things are in the file -----------------------------------------------------------------

_RULE_HEADER = re.compile(r"\s*\[\[\s*rule\s*\]\]\s*(?:#.*)?$")
_TABLE_HEADER = re.compile(r"\s*\[\[?\s*([^\[\]]+?)\s*\]\]?\s*(?:#.*)?$")


class _Lines:
    """Line numbers of rules and keys, found by scanning the text (tomllib reports no positions).

    Each `[[rule]]` header opens a block that runs to the next one; inside it, `[rule.when]` and
    `[rule.then]` open sections. A key is looked for as `key =` at the start of a line in its section
    (or as a `[rule.when.key]` header), then as `when.key =` or inside `when = {...}` among the rule's
    own lines; failing those, the section's header stands in, then the rule's header. Lines inside
    multi-line strings are skipped. If the headers found do not match the rules tomllib read (rules
    written as an inline array), no line numbers are given.
    """

    def __init__(self, text: str) -> None:
        self.lines = text.split("\n")
        self.live = _outside_strings(self.lines)
        self.tables: dict[int, str] = {}  # 0-based line -> the table its header opens ("rule", "rule.when")
        self.sections: list[str | None] = []  # 0-based line -> "rule", "when", "then", another table, None
        self.headers: list[int] = []  # 0-based lines of the [[rule]] headers
        section = None
        for n, line in enumerate(self.lines):
            if not self.live[n]:
                pass  # inside a multi-line string: whatever it looks like, no header or key
            elif _RULE_HEADER.match(line):
                self.headers.append(n)
                self.tables[n] = section = "rule"
            elif header := _TABLE_HEADER.match(line):
                self.tables[n] = re.sub(r"[\s\"']", "", header.group(1))
                section = {"rule.when": "when", "rule.then": "then"}.get(self.tables[n], self.tables[n])
            self.sections.append(section)
        self.usable = True

    def expect_rules(self, count: int) -> None:
        self.usable = count == len(self.headers)

    def rule(self, index: int) -> int | None:
        return self.headers[index] + 1 if self.usable else None

    def key(self, index: int, key: str | None, section: str = "rule") -> int | None:
        """The line of `key` in the rule's `section` ("rule" for its own keys, "when", "then")."""
        if not self.usable or key is None:
            return self.rule(index)
        first = self.headers[index]
        block = [n for n in range(first, self.headers[index + 1] if index + 1 < len(self.headers)
                                  else len(self.lines)) if self.live[n]]
        k = rf"""["']?{re.escape(key)}["']?"""
        at_start = re.compile(rf"\s*{k}\s*=")
        for n in block:
            if (self.sections[n] == section and at_start.match(self.lines[n])
                    or self.tables.get(n) == (f"rule.{key}" if section == "rule" else f"rule.{section}.{key}")):
                return n + 1
        if section == "rule":
            return first + 1
        dotted = re.compile(rf"\s*{section}\s*\.\s*{k}\s*=")
        inline = re.compile(rf"\s*{section}\s*=.*[{{,]\s*{k}\s*=")
        opened = re.compile(rf"\s*{section}\s*[=.]")
        for pattern in (dotted, inline, opened):
            for n in block:
                if self.sections[n] == "rule" and pattern.match(self.lines[n]):
                    return n + 1
        for n in block:
            if self.tables.get(n) == f"rule.{section}":
                return n + 1
        return first + 1

    def top_key(self, key: str) -> int | None:
        """The line of a top-level key or table, if it can be found."""
        at_start = re.compile(rf"""\s*["']?{re.escape(key)}["']?\s*=""")
        for n, line in enumerate(self.lines):
            if self.live[n] and (self.sections[n] is None and at_start.match(line)
                                 or self.tables.get(n, "").split(".")[0] == key):
                return n + 1
        return None


def _outside_strings(lines: list[str]) -> list[bool]:
    """For each line, whether it starts outside a multi-line string (so it can hold a key or header)."""
    live = []
    closing: str | None = None  # the delimiter of the multi-line string we are in
    for line in lines:
        live.append(closing is None)
        i = 0
        while i < len(line):
            if closing is not None:
                if closing == '"""' and line[i] == "\\":
                    i += 2
                elif line.startswith(closing, i):
                    i += 3
                    while i < len(line) and line[i] == closing[0]:  # """a"""" ends with a quote inside
                        i += 1
                    closing = None
                else:
                    i += 1
            elif line[i] == "#":
                break
            elif line.startswith('"""', i) or line.startswith("'''", i):
                closing = line[i:i + 3]
                i += 3
            elif line[i] == '"':
                i += 1
                while i < len(line) and line[i] != '"':
                    i += 2 if line[i] == "\\" else 1
                i += 1
            elif line[i] == "'":
                end = line.find("'", i + 1)
                i = len(line) if end < 0 else end + 1
            else:
                i += 1
    return live
