"""Routing rules: Persian folding, every condition and action, the file's errors with their lines, and
a fuzz that evaluation never raises."""

from __future__ import annotations

import dataclasses
import time
import random
import string
from pathlib import Path

import pytest

from gateway.domain import Priority
from workflows.persian import fold, fold_letters
import workflows.rules as rules_module
from workflows.rules import MAX_TEXT, Decision, Facts, RuleError, RuleSet, load_rules

EXAMPLE = Path(__file__).resolve().parent.parent / "workflows" / "workflows.toml"
KNOWN_CONDITIONS = ("channel, sender, subject_any, text_any, text_regex, language, customer_tags, has_attachment, "
                    "business_hours, first_message")
KNOWN_ACTIONS = "department, priority, tags, assign, reply_template, review, stop"
REPEATS = ("repeats a group that itself repeats, like (a+)+, which can take forever on some messages; use a "
           "possessive a++ or an atomic group (?>...) inside")
NOT_A_SENDER = ("is not an email address, a domain (@example.ir), a phone number in international form (+98912*) "
                "or kind:value")


# --- Persian folding ------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "folded"), [
    ("فاكتور", "فاکتور"),  # Arabic kaf
    ("علي", "علی"),  # Arabic yeh
    ("مصطفى", "مصطفی"),  # alef maksura
    ("مدرسة", "مدرسه"),  # teh marbuta
    ("أحمد", "احمد"),
    ("إیران", "ایران"),
    ("ٱلله", "الله"),  # alef wasla
    ("آب", "آب"),  # آ is a letter of its own
    ("ا\u0653ب", "آب"),  # ... also when written as alef + maddah
    ("سفارش ۱۲۳", "سفارش 123"),  # Persian digits
    ("٠٩١٢", "0912"),  # Arabic-Indic digits
    ("می\u200cخواهم", "میخواهم"),  # ZWNJ (half-space) removed, not a space
    ("کتاب\u200cها", "کتابها"),
    ("\u200fسلام\u200e", "سلام"),  # direction marks
    ("\u202bسلام\u202c", "سلام"),  # bidi embedding
    ("کِتابٌ", "کتاب"),  # harakat
    ("مُحَمَّد", "محمد"),  # damma, fatha, shadda
    ("هذا\u0670", "هذا"),  # superscript alef
    ("ســـــلام", "سلام"),  # tatweel
    ("خانۀ من", "خانه من"),  # heh with yeh above
    ("خانهٔ من", "خانه من"),  # heh + hamza above
    ("ﻓﺎﻛﺘﻮﺭ", "فاکتور"),  # Arabic presentation forms (text from PDFs)
    ("مسئول مؤسسه", "مسئول مؤسسه"),  # ordinary Persian spellings kept
    ("  Invoice\n\tPAID\u00a0now ", "invoice paid now"),  # casefold, whitespace collapsed
    ("ＩＮＶＯＩＣＥ", "invoice"),  # full-width Latin
])
def test_fold_gives_one_spelling(raw: str, folded: str) -> None:
    assert fold(raw) == folded


def test_arabic_and_persian_spellings_of_real_words_fold_alike() -> None:
    arabic_keyboard, persian_keyboard = "پيگيري سفارش ١٢٣٤ كه مي‌خواستم", "پیگیری سفارش ۱۲۳۴ که میخواستم"
    assert fold(arabic_keyboard) == fold(persian_keyboard) == "پیگیری سفارش 1234 که میخواستم"


def test_fold_letters_keeps_case_and_spacing_for_patterns() -> None:
    assert fold_letters("\\D  ي\\S") == "\\D  ی\\S"


def test_fold_is_idempotent() -> None:
    rng = random.Random(7)
    alphabet = "يیكکةهأإآاى۰۱۲٣٤ \u200c\u200f\u064e\u0640\n\tABCabc" + "سلامفاکتور"
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(30)))
        assert fold(fold(text)) == fold(text)


# --- conditions -----------------------------------------------------------------------------------

def one_rule(when: str) -> RuleSet:
    return load_rules(f'[[rule]]\nname = "r"\n[rule.when]\n{when}\n[rule.then]\ntags = ["hit"]\n')


def fires(when: str, **facts: object) -> bool:
    facts.setdefault("channel", "email")
    return one_rule(when).evaluate(Facts(**facts)).tags == ("hit",)  # type: ignore[arg-type]


@pytest.mark.parametrize(("when", "facts", "expected"), [
    ('channel = ["email", "sms"]', {"channel": "sms"}, True),
    ('channel = ["email", "sms"]', {"channel": "telegram"}, False),
    ('channel = "SMS"', {"channel": "sms"}, True),
    ('text_any = ["فاکتور"]', {"text": "فاكتور شماره ۱۲ را نفرستادید"}, True),  # Arabic kaf in the message
    ('text_any = ["فاكتور"]', {"text": "فاکتور"}, True),  # ... or in the rule
    ('text_any = ["فاکتور", "صورتحساب"]', {"text": "صورت حساب"}, False),  # a space is not a half-space
    ('text_any = ["صورتحساب"]', {"text": "صورت\u200cحساب ماه قبل"}, True),  # ZWNJ
    ('text_any = ["فاکتور"]', {"text": "سلام، وقت بخیر"}, False),
    ('text_any = ["فاکتور"]', {"text": "فاکتورهای ماه قبل"}, True),  # substrings: suffixes are fine
    ('text_any = ["سفارش ۱۲۳"]', {"text": "سفارش 123"}, True),
    ('text_any = ["invoice"]', {"text": "Your INVOICE is wrong"}, True),
    ('text_any = ["invoice"]', {"subject": "invoice", "text": "hello"}, False),  # the body only
    ('subject_any = ["urgent"]', {"subject": "URGENT: help"}, True),
    ('subject_any = ["urgent"]', {"subject": "help", "text": "urgent"}, False),
    ('subject_any = ["urgent"]', {"subject": None}, False),
    ('text_regex = "سفارش\\\\s*\\\\d+"', {"text": "پیگیری سفارش ۱۲۳"}, True),
    ('text_regex = "سفارش\\\\s*\\\\d+"', {"text": "سفارش\u200cها"}, False),
    ('text_regex = "فاكتور\\\\s*\\\\d+"', {"text": "فاکتور ٤٥"}, True),  # Arabic letters in the pattern too
    ('text_regex = ["\\\\border\\\\b", "سفارش"]', {"text": "my ORDER is late"}, True),
    ('text_regex = "\\\\border\\\\b"', {"text": "reorder"}, False),
    ('text_regex = "^سلام .* ممنون$"', {"text": "سلام\nلطفاً پیگیری کنید\nممنون"}, True),  # one line
    ('language = "fa"', {"language": "fa"}, True),
    ('language = "fa"', {"language": "fa-IR"}, True),
    ('language = "fa"', {"language": "FA_ir"}, True),
    ('language = "fa"', {"language": "fas"}, False),
    ('language = "fa"', {"language": "en"}, False),
    ('language = "fa"', {"language": None}, False),
    ('language = ["fa", "en"]', {"language": "en"}, True),
    ('customer_tags = ["vip"]', {"customer_tags": ("VIP", "b2b")}, True),
    ('customer_tags = ["vip"]', {"customer_tags": ()}, False),
    ('customer_tags = ["ويژه"]', {"customer_tags": ("ویژه",)}, True),
    ('has_attachment = true', {"has_attachment": True}, True),
    ('has_attachment = true', {"has_attachment": False}, False),
    ('business_hours = false', {"business_hours": False}, True),
    ('business_hours = false', {"business_hours": True}, False),
    ('business_hours = false', {"business_hours": None}, False),  # unknown matches neither
    ('first_message = true', {"first_message": True}, True),
    ('first_message = false', {"first_message": True}, False),
    ('', {"channel": "telegram"}, True),  # no conditions: every message
    ('channel = "email"\ntext_any = ["فاکتور"]', {"channel": "email", "text": "فاکتور"}, True),  # ANDed
    ('channel = "email"\ntext_any = ["فاکتور"]', {"channel": "sms", "text": "فاکتور"}, False),
    ('channel = "email"\ntext_any = ["فاکتور"]', {"channel": "email", "text": "سلام"}, False),
])
def test_each_condition(when: str, facts: dict[str, object], expected: bool) -> None:
    assert fires(when, **facts) is expected


@pytest.mark.parametrize(("pattern", "sender", "expected"), [
    ("*@bigcorp.ir", "email:ali@bigcorp.ir", True),
    ("@bigcorp.ir", "email:ali@bigcorp.ir", True),
    ("@BigCorp.ir", "email:Ali@BIGCORP.IR", True),
    ("@bigcorp.ir", "email:ali@mail.bigcorp.ir", False),  # a domain is exact ...
    ("*@*.bigcorp.ir", "email:ali@mail.bigcorp.ir", True),  # ... a glob reaches subdomains
    ("*@bigcorp.ir", "email:ali@bigcorp.ir.evil.com", False),
    ("sara@example.ir", "email:sara@example.ir", True),
    ("sara@example.ir", "email:sara2@example.ir", False),
    ("+98912*", "phone:+989121234567", True),
    ("+98912*", "phone:+989351234567", False),
    ("+98 912 *", "phone:+989121234567", True),
    ("+۹۸۹۱۲*", "phone:+989121234567", True),
    ("+98912123456?", "phone:+989121234567", True),
    ("+98912*", "telegram:98912", False),
    ("telegram:1234*", "telegram:123456", True),
    ("telegram:1234*", "phone:+123456", False),
    ("email:*@gmail.com", "email:x@gmail.com", True),
    ("*@bigcorp.ir", "", False),
])
def test_sender_patterns(pattern: str, sender: str, expected: bool) -> None:
    assert fires(f'sender = "{pattern}"', sender=sender) is expected


def test_a_sender_list_is_ored() -> None:
    assert fires('sender = ["@a.ir", "+98912*"]', sender="phone:+989121234567")
    assert not fires('sender = ["@a.ir", "+98912*"]', sender="email:x@b.ir")


def test_text_beyond_the_limit_is_not_seen() -> None:
    rules = one_rule('text_any = ["فاکتور"]')
    assert rules.evaluate(Facts("email", text="x" * (MAX_TEXT - 10) + " فاکتور")).tags == ("hit",)
    assert rules.evaluate(Facts("email", text="x" * MAX_TEXT + " فاکتور")).tags == ()


def test_a_safe_pattern_on_a_long_hostile_message_is_quick() -> None:
    rules = one_rule('text_regex = "سفارش\\\\s*\\\\d+x"')
    assert rules.evaluate(Facts("email", text="سفارش " + "۱" * 100_000)).tags == ()


# --- combining rules ------------------------------------------------------------------------------

FOUR = '''\
[[rule]]
name = "Defaults"
[rule.then]
department = "general"
priority = "normal"
assign = "round_robin"
tags = ["new"]

[[rule]]
name = "VIP"
[rule.when]
customer_tags = ["vip"]
[rule.then]
priority = "high"
tags = ["vip", "new"]
review = true

[[rule]]
name = "Billing"
[rule.when]
channel = ["email", "sms"]
text_any = ["فاکتور", "invoice"]
[rule.then]
department = "billing"
tags = ["billing"]
reply_template = "ack_billing"
review = false
stop = true

[[rule]]
name = "Complaints"
[rule.when]
text_any = ["شکایت"]
[rule.then]
priority = "urgent"
tags = ["complaint"]
'''


def test_later_rules_override_tags_accumulate_review_stays_and_stop_ends_the_walk() -> None:
    decision = load_rules(FOUR).evaluate(Facts("email", text="شکایت از فاكتور", customer_tags=("vip",)))
    assert decision.department == "billing"
    assert decision.priority is Priority.HIGH  # "Complaints" was never reached
    assert decision.assign == "round_robin"
    assert decision.reply_template == "ack_billing"
    assert decision.tags == ("new", "vip", "billing")
    assert decision.review is True  # review = false in a later rule does not undo it
    assert [f.rule for f in decision.fired] == ["Defaults", "VIP", "Billing"]
    assert [(m.rule, m.reason) for m in decision.missed] == [("Complaints", 'not reached: "Billing" stops')]


def test_a_rule_that_does_not_match_does_nothing() -> None:
    decision = load_rules(FOUR).evaluate(Facts("telegram", text="شکایت دارم"))
    assert (decision.department, decision.priority, decision.tags) == ("general", Priority.URGENT, ("new", "complaint"))
    assert decision.review is False
    assert [f.rule for f in decision.fired] == ["Defaults", "Complaints"]


def test_firing_says_why() -> None:
    decision = load_rules(FOUR).evaluate(Facts("sms", text="فاكتور", customer_tags=("VIP",)))
    assert [f.why for f in decision.fired] == [
        ("no conditions: matches every message",),
        ('customer_tags: "vip"',),
        ('channel: "sms"', 'text_any: "فاکتور" in text'),
    ]
    assert [f.position for f in decision.fired] == [1, 2, 3]
    assert [f.line for f in decision.fired] == [1, 9, 18]


def test_explain() -> None:
    decision = load_rules(FOUR).evaluate(Facts("email", text="invoice please", customer_tags=()))
    assert decision.explain() == [
        '#1 "Defaults" (rules.toml:1) fired: no conditions: matches every message',
        '  then: department = "general", priority = "normal", assign = "round_robin", tags += ["new"]',
        '#2 "VIP" (rules.toml:9) did not fire: customer_tags: none of "vip" (the customer has no tags)',
        '#3 "Billing" (rules.toml:18) fired: channel: "email"; text_any: "invoice" in text',
        ('  then: department = "billing" (was "general"), reply_template = "ack_billing", tags += ["billing"], '
         'stop = true'),
        '#4 "Complaints" (rules.toml:30) not reached: "Billing" stops',
        ('result: department = "billing", priority = "normal", assign = "round_robin", '
         'reply_template = "ack_billing", tags = ["new", "billing"]'),
    ]


@pytest.mark.parametrize(("when", "facts", "reason"), [
    ('channel = ["email", "sms"]', {"channel": "telegram"}, 'channel: "telegram", not "email" or "sms"'),
    ('sender = ["@a.ir"]', {"sender": "phone:+98912"}, 'sender: "phone:+98912" matches none of "@a.ir"'),
    ('text_any = ["a", "b"]', {"text": "c"}, 'text_any: none of "a", "b" in text'),
    ('subject_any = ["a"]', {"subject": "c"}, 'subject_any: none of "a" in subject'),
    ('text_regex = "\\\\d{4}"', {"text": "12"}, 'text_regex: "\\\\d{4}" found nothing in text'),
    ('language = "fa"', {"language": None}, 'language: unknown, not "fa"'),
    ('customer_tags = ["vip"]', {"customer_tags": ("b2b",)}, 'customer_tags: none of "vip" (the customer has "b2b")'),
    ('has_attachment = true', {"has_attachment": False}, "has_attachment: false, rule wants true"),
])
def test_a_miss_says_which_condition_failed(when: str, facts: dict[str, object], reason: str) -> None:
    facts.setdefault("channel", "email")
    (miss,) = one_rule(when).evaluate(Facts(**facts)).missed  # type: ignore[arg-type]
    assert miss.reason == "did not fire: " + reason


def test_a_regex_firing_quotes_what_it_found() -> None:
    (firing,) = one_rule('text_regex = "سفارش\\\\s*\\\\d+"').evaluate(Facts("sms", text="سفارش ۱۲۳ کجاست")).fired
    assert firing.why == ('text_regex: "سفارش\\\\s*\\\\d+" found "سفارش 123"',)


def test_no_rules_decide_nothing() -> None:
    decision = load_rules("# nothing yet\n").evaluate(Facts("email", text="hi"))
    assert decision == Decision()
    assert decision.explain() == ["no rules", "result: no changes"]


def test_references_for_the_caller_to_check() -> None:
    rules = load_rules(FOUR + '\n[[rule]]\nname = "Sara"\n[rule.then]\nassign = "@Sara_S"\n')
    assert rules.departments_named() == {"general", "billing"}
    assert rules.templates_named() == {"ack_billing"}
    assert rules.agents_named() == {"Sara_S"}
    rules.check_references(departments=["general", "billing"], templates=["ack_billing"], agents=["sara_s"])
    rules.check_references()  # nothing given, nothing checked
    with pytest.raises(RuleError) as bad:
        rules.check_references(departments=["general"])
    assert str(bad.value) == 'rules.toml:24: rule "Billing": no department named "billing"'
    with pytest.raises(RuleError) as bad:
        rules.check_references(templates=[])
    assert str(bad.value) == 'rules.toml:26: rule "Billing": no reply template named "ack_billing"'
    with pytest.raises(RuleError) as bad:
        rules.check_references(agents=["ali"])
    assert str(bad.value) == 'rules.toml:41: rule "Sara": no agent with username "@Sara_S"'


# --- the file's errors ----------------------------------------------------------------------------

def error_of(text: str) -> str:
    with pytest.raises(RuleError) as caught:
        load_rules(text)
    message = str(caught.value)
    assert "\n" not in message
    return message


def rule_text(name: str = "x", when: str = "", then: str = 'tags = ["a"]') -> str:
    return f'[[rule]]\nname = "{name}"\n[rule.when]\n{when}\n[rule.then]\n{then}\n'


@pytest.mark.parametrize(("when", "reason"), [
    ('txt_any = ["x"]', f'unknown condition "txt_any" (known: {KNOWN_CONDITIONS})'),
    ('channel = ["email", "fax"]', 'channel must be email|sms|telegram|loopback, got "fax"'),
    ("text_any = 42", "text_any must be a string or a list of strings, got 42"),
    ('text_any = ["a", 1]', 'text_any must be a string or a list of strings, got ["a", 1]'),
    ("text_any = []", "text_any is an empty list"),
    ('text_any = ["a", "  "]', 'text_any has an empty value "  "'),
    ('text_any = ["ـ"]', 'text_any has an empty value "ـ"'),  # only a tatweel: nothing after folding
    ('subject_any = {a = 1}', "subject_any must be a string or a list of strings, got a table"),
    ('has_attachment = "yes"', 'has_attachment must be true or false, got "yes"'),
    ("business_hours = 1", "business_hours must be true or false, got 1"),
    ('text_regex = "سفارش("',
     'text_regex "سفارش(" is not a valid regular expression: missing ), unterminated subpattern at position 5'),
    ('text_regex = "سفارشِ\u200c("',  # the position counts the kasra and ZWNJ folding removes
     'text_regex "سفارشِ\u200c(" is not a valid regular expression: missing ), unterminated subpattern at position 7'),
    ('text_regex = "(\\\\w+\\\\s?)+$"',
     'text_regex "(\\\\w+\\\\s?)+$" ' + REPEATS),
    ('sender = ["0912*"]', f'sender "0912*" {NOT_A_SENDER}'),
    ('sender = ["bigcorp.ir"]', f'sender "bigcorp.ir" {NOT_A_SENDER}'),
])
def test_bad_conditions(when: str, reason: str) -> None:
    assert error_of(rule_text(when=when)) == f'rules.toml:4: rule "x": {reason}'


@pytest.mark.parametrize(("then", "reason"), [
    ('priority = "asap"', 'priority must be low|normal|high|urgent, got "asap"'),
    ('prio = "high"', f'unknown action "prio" (known: {KNOWN_ACTIONS})'),
    ('department = ""', 'department must be a non-empty string, got ""'),
    ("department = 3", "department must be a non-empty string, got 3"),
    ("reply_template = true", "reply_template must be a non-empty string, got true"),
    ("tags = 5", "tags must be a string or a list of strings, got 5"),
    ('assign = "bob"', 'assign must be round_robin|least_open|manual or "@username", got "bob"'),
    ('assign = "@bad name"', 'assign must be round_robin|least_open|manual or "@username", got "@bad name"'),
    ('review = "no"', 'review must be true or false, got "no"'),
    ('stop = "yes"', 'stop must be true or false, got "yes"'),
])
def test_bad_actions(then: str, reason: str) -> None:
    assert error_of(rule_text(then=then)) == f'rules.toml:6: rule "x": {reason}'


def test_good_spellings_are_accepted() -> None:
    rules = load_rules(rule_text(when='sender = "+98912*"', then='priority = "HIGH"\nassign = "@sara_s"\ntags = "a"'))
    (rule,) = rules.rules
    assert (rule.actions.priority, rule.actions.assign, rule.actions.tags) == (Priority.HIGH, "@sara_s", ("a",))


@pytest.mark.parametrize(("text", "message"), [
    ('[[rule]]\nname = "a"\n[rule.then]\nstop = true\n\n[[rule]]\n[rule.then]\nstop = true\n',
     "rules.toml:6: rule #2 has no name"),
    ('[[rule]]\nname = 5\n[rule.then]\nstop = true\n', "rules.toml:2: rule #1: name must be a non-empty string, got 5"),
    ('[[rule]]\nname = " "\n[rule.then]\nstop = true\n',
     'rules.toml:2: rule #1: name must be a non-empty string, got " "'),
    ('[[rule]]\nname = "a"\n[rule.then]\nstop = true\n\n[[rule]]\n# again\nname = "a"\n[rule.then]\nstop = true\n',
     'rules.toml:8: rule "a": duplicate name (first at line 1)'),
    ('[[rule]]\nname = "علي"\n[rule.then]\nstop = true\n[[rule]]\nname = "علی"\n[rule.then]\nstop = true\n',
     'rules.toml:6: rule "علی": duplicate name (first at line 1)'),  # the same name to the eye
    ('[[rule]]\nname = "a"\nwhn = {}\n[rule.then]\nstop = true\n',
     'rules.toml:3: rule "a": unknown key "whn" (known: name, when, then)'),
    ('[[rule]]\nname = "a"\n[rule.when]\nchannel = "sms"\n',
     'rules.toml:1: rule "a": has no actions (add a [rule.then] table)'),
    ('[[rule]]\nname = "a"\n[rule.then]\n', 'rules.toml:3: rule "a": has no actions (add a [rule.then] table)'),
    ('[[rule]]\nname = "a"\nwhen = "sms"\nthen = {stop = true}\n',
     'rules.toml:3: rule "a": when must be a table, got "sms"'),
    ('version = 1\n[[rule]]\nname = "a"\n',
     'rules.toml:1: unknown top-level key "version" (rules are [[rule]] tables)'),
    ('# rules\n[rule]\nname = "a"\n', "rules.toml:2: rules must be [[rule]] tables (double brackets), got a table"),
    ('[[rules]]\nname = "a"\n', 'rules.toml:1: unknown top-level key "rules" (rules are [[rule]] tables)'),
    ('[[rule]]\nname = "a\n', "rules.toml:2: TOML syntax error: Illegal character '\\n' (column 10)"),
    ('[[rule]]\nname = "a"\nname = "b"\n', "rules.toml:3: TOML syntax error: Cannot overwrite a value (column 11)"),
    ('[[rule]]\nname = "a"\n[rule.then]\ntags = ["a",\n\n',
     "rules.toml:4: TOML syntax error: Invalid value (at end of file)"),
])
def test_file_errors(text: str, message: str) -> None:
    assert error_of(text) == message


def test_other_tables_of_a_workflow_file_are_left_to_their_readers() -> None:
    text = ('[calendar]\ntimezone = "Asia/Tehran"\n\n' + rule_text(name="a")
            + '[sla.urgent]\nfirst_response = "1h"\n\n' + rule_text(name="b", then='priority = "asap"'))
    assert error_of(text) == 'rules.toml:18: rule "b": priority must be low|normal|high|urgent, got "asap"'
    assert len(load_rules(text.replace("asap", "low")).rules) == 2


def test_an_error_deep_in_a_file_names_its_line() -> None:
    good = "".join(rule_text(name=f"rule {n}", when=f'text_any = ["کلمه {n}"]') for n in range(40))
    text = good + rule_text(name="Billing by keyword", when='channel = ["email"]\n\n# keywords:\ntxt_any = ["فاکتور"]')
    assert text.count("\n") == 40 * 6 + 9
    assert error_of(text) == (f'rules.toml:{40 * 6 + 7}: rule "Billing by keyword": unknown condition "txt_any" '
                              f"(known: {KNOWN_CONDITIONS})")


def test_a_key_is_found_in_its_own_rule_and_section() -> None:
    text = (rule_text(name="a", then='priority = "high"')  # the same key, earlier, is fine
            + '[[rule]]\nname = "b"\n[rule.when]\n# priority = "asap" in a comment\nchannel = "sms"\n'
            + '[rule.then]\ntags = ["priority"]\n\npriority = "asap"\n')
    assert error_of(text) == 'rules.toml:15: rule "b": priority must be low|normal|high|urgent, got "asap"'


def test_multi_line_strings_do_not_look_like_rules() -> None:
    text = ('[[rule]]\nname = """Multi\n[[rule]]\npriority = "asap"\n"""\n[rule.then]\ntags = ["a"]\n\n'
            '[[rule]]\nname = "b"\n[rule.then]\npriority = "asap"\n')
    assert error_of(text) == 'rules.toml:12: rule "b": priority must be low|normal|high|urgent, got "asap"'


@pytest.mark.parametrize(("text", "line"), [
    ('[[rule]]\nname = "x"\nwhen = { channel = "email", text_ayn = ["a"] }\nthen = { tags = ["a"] }\n', 3),
    ('[[rule]]\nname = "x"\nwhen.channel = "email"\nwhen.text_ayn = ["a"]\nthen.tags = ["a"]\n', 4),
    ('[[rule]]\nname = "x"\n[rule.when]\nchannel = "email"\n"text_ayn" = ["a"]\n[rule.then]\ntags = ["a"]\n', 5),
    ('[[rule]]\nname = "x"\n[rule.then]\ntags = ["a"]\n[rule.when.text_ayn]\na = 1\n', 5),
    ('[[ rule ]]  # the first\nname = "x"\n[ rule . when ]\n\ntext_ayn = ["a"]\n[rule.then]\ntags = ["a"]\n', 5),
])
def test_keys_written_other_ways_are_found(text: str, line: int) -> None:
    assert error_of(text).startswith(f'rules.toml:{line}: rule "x": unknown condition "text_ayn"')


def test_rules_written_as_an_inline_array_get_no_line() -> None:
    text = 'rule = [{name = "a", then = {priority = "asap"}}]\n'
    assert error_of(text) == 'rules.toml: rule "a": priority must be low|normal|high|urgent, got "asap"'


def test_the_source_names_the_file() -> None:
    with pytest.raises(RuleError) as bad:
        load_rules(rule_text(then='priority = "asap"'), "/etc/kartabl/rules.toml")
    assert str(bad.value).startswith("/etc/kartabl/rules.toml:6: ")
    assert (bad.value.line, bad.value.rule, bad.value.source) == (6, "x", "/etc/kartabl/rules.toml")


@pytest.mark.parametrize("pattern", ["(a+)+b", "(?:x*)*", "(a|b+)*c", "(?:\\d+\\s*)+$", "((ab)*c)+"])
def test_patterns_that_can_take_exponential_time_are_refused(pattern: str) -> None:
    toml = pattern.replace("\\", "\\\\")
    assert "repeats a group that itself repeats" in error_of(rule_text(when=f'text_regex = "{toml}"'))


@pytest.mark.parametrize("pattern", [
    "(?:\\d{3})+", "(?:ab)+", "(?:\\d++\\s*+)+x", "(?>a+)+b", "(a+)?", "سفارش\\s*\\d+",
])
def test_safe_repetition_is_allowed(pattern: str) -> None:
    toml = pattern.replace("\\", "\\\\")
    load_rules(rule_text(when=f'text_regex = "{toml}"'))


# --- the example file -----------------------------------------------------------------------------

def test_the_example_file_loads_and_routes() -> None:
    rules = load_rules(EXAMPLE.read_text(encoding="utf-8"), "workflows.toml")
    assert len(rules.rules) == 11
    assert rules.departments_named() == {"general", "enterprise", "billing", "technical", "sales"}
    assert rules.templates_named() == {"ack_billing", "after_hours"}
    assert rules.agents_named() == {"sara_support"}

    persian = rules.evaluate(Facts("email", "email:ali@bigcorp.ir", "پيگيري", "فاكتور سفارش ۱۲۳۴۵ را مي‌خواهم",
                                   "fa", ("VIP",), has_attachment=False, business_hours=True, first_message=True))
    assert (persian.department, persian.priority, persian.assign, persian.reply_template) == (
        "billing", Priority.HIGH, "@sara_support", "ack_billing")
    assert persian.tags == ("vip", "bigcorp", "order")

    english = rules.evaluate(Facts("sms", "phone:+989121234567", "", "I was charged twice, unacceptable!", "en",
                                   business_hours=False, first_message=True))
    assert (english.department, english.priority, english.reply_template, english.review) == (
        "billing", Priority.URGENT, "after_hours", True)

    monitor = rules.evaluate(Facts("email", "email:monitor@status.example.ir", "probe", "invoice complaint"))
    assert (monitor.priority, monitor.tags, monitor.department) == (Priority.LOW, ("monitoring",), "general")
    assert all(line.isprintable() for line in monitor.explain())


# --- fuzz -----------------------------------------------------------------------------------------

ALPHABET = ("سلامفاکتورصورتحسابسفارشمیخواهمشکایت" "يكةأإآىۀ" "۰۱۲۳۴۵۶۷۸۹٠١٢٣٤٥٦٧٨٩"
            "\u200c\u200d\u200e\u200f\u202b\u064e\u0651\u0670\u0640" "ﻓﺎﻛﺘﻮﺭ" + string.printable + "ＩＮ\u00a0\U0001f600")


def random_text(rng: random.Random) -> str:
    size = rng.choice([0, 1, 5, 40, 300, MAX_TEXT + 5])
    return "".join(rng.choice(ALPHABET) for _ in range(size))


def random_value(rng: random.Random) -> object:
    return rng.choice([None, 0, 1.5, True, b"\xff", ["vip"], {"a": 1}, random_text(rng), random_text(rng)])


def test_evaluate_never_raises() -> None:
    rng = random.Random(20240611)
    rules = load_rules(EXAMPLE.read_text(encoding="utf-8") + FOUR.replace('"Defaults"', '"Defaults 2"')
                       .replace('"VIP"', '"VIP 2"').replace('"Billing"', '"Billing 2"')
                       .replace('"Complaints"', '"Complaints 2"'))
    senders = ["email:ali@bigcorp.ir", "phone:+989121234567", "telegram:1", "", ":", "email:", "phone:+98912*"]
    for _ in range(300):
        facts = Facts(
            channel=rng.choice(["email", "sms", "telegram", "", None, 5]),  # type: ignore[arg-type]
            sender=rng.choice(senders + [random_value(rng)]),  # type: ignore[arg-type]
            subject=rng.choice([random_text(rng), random_value(rng)]),  # type: ignore[arg-type]
            text=rng.choice([random_text(rng), random_value(rng)]),  # type: ignore[arg-type]
            language=rng.choice(["fa", "en", "fa-IR", None, "", random_value(rng)]),  # type: ignore[arg-type]
            customer_tags=rng.choice(  # type: ignore[arg-type]
                [(), ("vip",), ("ويژه", None, 3), "vip", None, random_value(rng)]),
            has_attachment=rng.choice([True, False, None, "yes"]),  # type: ignore[arg-type]
            business_hours=rng.choice([True, False, None]),  # type: ignore[arg-type]
            first_message=rng.choice([True, False, 1]),  # type: ignore[arg-type]
        )
        decision = rules.evaluate(facts)
        assert len(decision.fired) + len(decision.missed) == len(rules.rules)
        assert all("\n" not in line for line in decision.explain())


def test_loading_a_mangled_file_raises_only_rule_errors() -> None:
    rng = random.Random(99)
    original = EXAMPLE.read_text(encoding="utf-8")
    pieces = ['"', "[", "]", "=", "\n", "[[rule]]\n", '"""', "#", "(", "+", "name", "when", "then", "1", " "]
    for _ in range(400):
        text = original
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(text))
            if rng.random() < 0.5:
                text = text[:at] + rng.choice(pieces) + text[at:]
            else:
                text = text[:at] + text[at + rng.randrange(1, 20):]
        try:
            load_rules(text)
        except RuleError as exc:
            assert "\n" not in str(exc)


def test_a_pattern_search_that_runs_out_of_time_is_no_match_and_says_so() -> None:
    rules = load_rules('[[rule]]\nname = "slow"\n[rule.when]\ntext_regex = "\\\\d+\\\\s*\\\\d+x"\n'
                       '[rule.then]\npriority = "high"\n', "rules.toml")
    started = time.monotonic()
    assert rules.evaluate(Facts(channel="sms", text="1" * 20_000)).priority is None
    assert time.monotonic() - started < 5

    class OutOfTime:  # what the regex package raises when a search passes its timeout
        def search(self, text: str, timeout: float) -> None:
            assert timeout == rules_module.REGEX_TIMEOUT_S
            raise TimeoutError("regex timed out")

    rule = rules.rules[0]
    slow = dataclasses.replace(rule, conditions=(dataclasses.replace(rule.conditions[0], values=(OutOfTime(),)),))
    decision = dataclasses.replace(rules, rules=(slow,)).evaluate(Facts(channel="sms", text="1" * 100))
    assert decision.priority is None and "gave up after 0.2s" in "\n".join(decision.explain())
