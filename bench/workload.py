"""The messages a benchmark offers: a pool of customers, half the messages first contacts, half follow-ups."""

from __future__ import annotations

import random

from gateway.addresses import Address
from gateway.domain import ChannelKind
from gateway.messages import InboundMessage

# A typical short support e-mail; its size, not its words, is what the database sees.
_TEXT = "سلام، سفارش شماره {n} هنوز نرسیده. لطفاً پیگیری کنید. Hello, my order {n} has not arrived yet."


def conversation(count: int, *, tag: str, seed: int, new_share: float = 0.5,
                 shared_pool: int = 0, shared_share: float = 0.0) -> list[InboundMessage]:
    """`count` e-mails with unique provider ids, from customers named after `tag`.

    Each message comes from a new customer with probability `new_share` (a new ticket), otherwise from
    one already seen (threaded onto that customer's live ticket). With `shared_pool`, a `shared_share`
    of the messages come instead from a pool of customers every caller with the same pool also uses:
    several processes then create and lock the same customer rows.
    Messages are built up front so that building them is not part of any measurement.
    """
    rng = random.Random(seed)
    seen: list[str] = []
    out = []
    for n in range(count):
        if shared_pool and rng.random() < shared_share:
            sender = f"shared{rng.randrange(shared_pool)}@example.com"
        elif not seen or rng.random() < new_share:
            sender = f"{tag}-c{len(seen)}@example.com"
            seen.append(sender)
        else:
            sender = rng.choice(seen)
        out.append(InboundMessage(
            ChannelKind.EMAIL, f"<{tag}-{n}@mail.example.com>", Address.parse("email", sender),
            _TEXT.format(n=n), subject=f"Order {n} has not arrived", sender_name=f"Customer {sender[:12]}",
        ))
    return out
