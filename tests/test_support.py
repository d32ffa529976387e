"""Synthetic support tickets: deterministic, varied, in house style, with disjoint splits and fair MC items."""

from __future__ import annotations

from collections import Counter

import pytest

from forgetless.data.support import (
    EMPATHY,
    ISSUE_TYPES,
    PRODUCTS,
    TONES,
    SupportTicket,
    generate_support_tickets,
    support_multiple_choice,
    support_splits,
)
from forgetless.errors import ForgetlessError


def test_same_seed_same_tickets_other_seed_other_tickets():
    first = generate_support_tickets(50, seed=3)
    assert first == generate_support_tickets(50, seed=3)
    assert [t.prompt for t in first] != [t.prompt for t in generate_support_tickets(50, seed=4)]
    # A longer draw starts with the shorter one: n does not change earlier tickets.
    assert generate_support_tickets(60, seed=3)[:50] == first


def test_tickets_cover_every_product_issue_and_tone():
    tickets = generate_support_tickets(400, seed=0)
    assert {t.product for t in tickets} == {p.name for p in PRODUCTS}
    assert {t.issue_type for t in tickets} == set(ISSUE_TYPES)
    assert {t.tone for t in tickets} == set(TONES)
    assert len({t.prompt for t in tickets}) >= 0.95 * len(tickets)  # short terse messages may repeat
    assert len({t.customer for t in tickets}) >= 20
    # Several phrasings per issue type: the prompts' first sentences after the tone opening differ.
    for issue in ISSUE_TYPES:
        prompts = [t.prompt for t in tickets if t.issue_type == issue and t.tone == "polite"]
        assert len({p.split(". ", 2)[1][:25] for p in prompts if p.count(". ") >= 2}) >= 2, issue


def test_replies_follow_the_house_style():
    for ticket in generate_support_tickets(300, seed=1):
        assert isinstance(ticket, SupportTicket)
        lines = ticket.response.split("\n")
        assert lines[0] == f"Hi {ticket.customer},"
        assert lines[2].startswith(EMPATHY[ticket.tone])
        assert "Your ticket reference is BWT-" in ticket.response
        assert lines[-2] == "Best regards,"
        assert lines[-1].endswith(", Brightwave Electronics Support")
        assert 60 <= len(ticket.response.split()) <= 150
        assert ticket.prompt.rstrip().split("\n")[-1].split()[0] == ticket.customer  # signed by the customer
        product = next(p for p in PRODUCTS if p.name == ticket.product)
        specifics = (product.name, product.app, product.export_path, product.plan)
        assert any(s in ticket.response for s in specifics) or any(steps in ticket.response for _, steps in product.how_to)


def test_software_is_never_shipped_late():
    tickets = generate_support_tickets(600, seed=2)
    software = {p.name for p in PRODUCTS if p.is_software}
    assert not [t for t in tickets if t.product in software and t.issue_type == "late_delivery"]
    assert not [t for t in tickets if t.product in software and "return label" in t.response]


def test_negative_count_is_a_user_error():
    with pytest.raises(ForgetlessError):
        generate_support_tickets(-1, seed=0)


def test_splits_are_sized_disjoint_and_deterministic():
    train, heldout = support_splits(200, 40)
    assert len(train) == 200 and len(heldout) == 40
    assert not {t.prompt for t in train} & {t.prompt for t in heldout}
    assert (train, heldout) == support_splits(200, 40)
    assert train == generate_support_tickets(200, seed=0)


def _readdressed(reply: SupportTicket, ticket: SupportTicket) -> str:
    text = reply.response.replace(f"Hi {reply.customer},", f"Hi {ticket.customer},", 1)
    return text.replace(reply.order_number, ticket.order_number)


def test_multiple_choice_answer_is_the_tickets_own_reply():
    tickets = generate_support_tickets(120, seed=5)
    items = support_multiple_choice(tickets, seed=0)
    assert items == support_multiple_choice(tickets, seed=0)
    assert len(items) == len(tickets)
    positions = Counter()
    for ticket, item in zip(tickets, items):
        assert item["prompt"] == ticket.prompt
        assert len(item["choices"]) == 4 and len(set(item["choices"])) == 4
        assert item["choices"][item["answer"]] == ticket.response
        assert item["issue_types"][item["answer"]] == ticket.issue_type
        positions[item["answer"]] += 1
        same_product_others = [t for t in tickets if t.product == ticket.product and t.issue_type != ticket.issue_type]
        for index, choice in enumerate(item["choices"]):
            if index == item["answer"]:
                continue
            assert item["issue_types"][index] != ticket.issue_type
            assert choice.startswith(f"Hi {ticket.customer},")  # the name gives nothing away
            sources = [t for t in tickets if _readdressed(t, ticket) == choice]
            assert sources and all(t.issue_type != ticket.issue_type for t in sources)
            if len(same_product_others) >= 3:
                assert any(t.product == ticket.product for t in sources)
    assert min(positions.values()) >= len(items) // 10 and len(positions) == 4


def test_multiple_choice_needs_other_issue_types():
    tickets = [t for t in generate_support_tickets(200, seed=0) if t.issue_type == "refund"]
    with pytest.raises(ForgetlessError):
        support_multiple_choice(tickets)
