"""Synthetic customer-support tickets for a fictional company: a chat-style training domain.

`generate_support_tickets(n, seed)` writes customer messages (8 products x 8 issue types x 5 tones,
several phrasings each, names, order numbers, dates, amounts) and the reply an agent of
Brightwave Electronics sends. The replies follow one learnable house style, which is what a
fine-tuned model should pick up:

    Hi <first name>,                          greeting by name
    <one sentence of empathy>                 matched to the customer's tone
    <what was done + product-specific steps>  concrete, names the product's own app, buttons, plan
    Your ticket reference is BWT-123456. ...  a ticket reference
    Best regards,                             fixed sign-off: agent name and company name
    <agent>, Brightwave Electronics Support

Everything comes from one `random.Random(seed)`, so a seed always gives the same tickets.
`support_splits` gives disjoint train / held-out sets and `support_multiple_choice` turns tickets
into 4-choice questions (pick the right reply) for an in-domain accuracy.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..errors import ForgetlessError

COMPANY = "Brightwave Electronics"
SIGN_OFF = f"{COMPANY} Support"


@dataclass(frozen=True)
class Product:
    name: str  # full name, used in replies
    nickname: str  # how a customer might write it
    price: str
    app: str  # where account and device settings live
    plan: str  # the product's paid subscription
    symptoms: tuple[str, ...]  # "... stops working": how a defective unit misbehaves
    fix: str  # the first troubleshooting step an agent gives
    data: str  # what a data export contains
    export_path: str  # where the export button is
    how_to: tuple[tuple[str, str], ...]  # (what the customer wants to do, the agent's steps)
    is_software: bool = False  # nothing is shipped: no late deliveries, refunds need no return


PRODUCTS: tuple[Product, ...] = (
    Product(
        name="AeroLink AX3000 Wi-Fi router",
        nickname="AX3000 router",
        price="$149.99",
        app="the AeroLink app",
        plan="SecureHome network protection",
        symptoms=("drops the Wi-Fi connection every few minutes", "keeps rebooting on its own", "shows a solid red light"),
        fix="hold the reset pinhole on the back for 10 seconds until the light blinks white, then run setup again in the AeroLink app",
        data="your connected-device history and network settings",
        export_path="the AeroLink app under Settings > Network > Backup & Export",
        how_to=(
            ("set up a guest network", "open the AeroLink app, go to Wi-Fi > Guest Network, switch it on, choose a name and password, and tap Save; guests never see your main devices"),
            ("turn on parental controls", "open the AeroLink app, go to Family > Profiles, add a profile for each child, assign their devices, and set a bedtime under Schedule"),
        ),
    ),
    Product(
        name="VaultSync cloud-backup app",
        nickname="VaultSync",
        price="$59.99",
        app="the VaultSync desktop app",
        plan="VaultSync Premium",
        symptoms=("stops backing up halfway", "says every backup failed", "crashes when it starts"),
        fix="sign out of the VaultSync desktop app, update it from Help > Check for Updates, sign back in and press Back Up Now",
        is_software=True,
        data="all of your backed-up files and folder history",
        export_path="vaultsync.com under Account > Data > Export Everything",
        how_to=(
            ("restore an older version of a file", "open the VaultSync desktop app, right-click the file, choose Version History, pick the date you want and click Restore"),
            ("exclude a folder from backups", "open the VaultSync desktop app, go to Preferences > Backup Sets, select the folder and click Exclude; it stops uploading at the next sync"),
        ),
    ),
    Product(
        name="ThermaSmart T2 thermostat",
        nickname="T2 thermostat",
        price="$199.00",
        app="the Brightwave Home app",
        plan="Energy Insights",
        symptoms=("shows a blank screen", "ignores the temperature I set", "keeps losing its Wi-Fi connection"),
        fix="switch off the breaker for the heating system for 30 seconds, switch it back on, then check that the C-wire is seated firmly in its terminal",
        data="your temperature history and monthly energy reports",
        export_path="the Brightwave Home app under Devices > ThermaSmart > Energy > Export",
        how_to=(
            ("create a weekly heating schedule", "open the Brightwave Home app, go to Devices > ThermaSmart > Schedule, tap Add Period for each day, set the times and temperatures, and tap Save"),
            ("set up Away mode", "open the Brightwave Home app, go to Devices > ThermaSmart > Modes, turn on Auto-Away, and the thermostat will switch to an eco temperature when your phone leaves home"),
        ),
    ),
    Product(
        name="PulseBeat Pro wireless headphones",
        nickname="PulseBeat Pro headphones",
        price="$129.99",
        app="the PulseBeat app",
        plan="PulseBeat Care+ protection",
        symptoms=("only play sound in the left ear", "won't charge anymore", "keep disconnecting from my phone"),
        fix="place them in the case, hold the case button for 15 seconds until the light flashes amber, then pair them again from your phone's Bluetooth menu",
        data="your listening profile and saved EQ presets",
        export_path="the PulseBeat app under Profile > Privacy > Export My Data",
        how_to=(
            ("turn on noise cancelling", "press and hold the right earcup for two seconds, or open the PulseBeat app and choose Sound > Noise Control > Active; a short tone confirms it"),
            ("connect them to two devices at once", "open the PulseBeat app, go to Connections, turn on Multipoint, then pair the second device from its Bluetooth menu"),
        ),
    ),
    Product(
        name="LumaView 4K security camera",
        nickname="LumaView camera",
        price="$179.00",
        app="the LumaView app",
        plan="LumaView Cloud Recording",
        symptoms=("shows only a black picture", "stopped recording at night", "goes offline every evening"),
        fix="unplug the camera for 30 seconds, plug it back in, and in the LumaView app go to Camera > Settings > Firmware and install any update",
        data="your recorded clips and motion-event history",
        export_path="the LumaView app under Account > Recordings > Download Archive",
        how_to=(
            ("set up motion zones", "open the LumaView app, select the camera, go to Settings > Motion Zones, draw a box over the area to watch and tap Save; motion outside it is ignored"),
            ("share the live view with family", "open the LumaView app, go to Settings > Shared Users, tap Invite and enter their email; they get view-only access"),
        ),
    ),
    Product(
        name="StrideBand 5 fitness tracker",
        nickname="StrideBand",
        price="$89.99",
        app="the StrideBand app",
        plan="StrideBand Coach",
        symptoms=("stopped counting steps", "won't turn on even after charging", "shows the wrong heart rate"),
        fix="put the tracker on its charger, hold the side button for 12 seconds until the logo appears, then sync it in the StrideBand app",
        data="your workouts, sleep records and heart-rate history",
        export_path="the StrideBand app under Me > Settings > Export Health Data",
        how_to=(
            ("track a swim", "swipe to Workouts on the tracker, choose Pool Swim, set your pool length, and press the side button to start; it locks the screen so water does not tap it"),
            ("change the watch face", "open the StrideBand app, tap the tracker image, choose Clock Faces, pick one and tap Install; it appears on the band after the next sync"),
        ),
    ),
    Product(
        name="Chorus Mini smart speaker",
        nickname="Chorus Mini speaker",
        price="$69.99",
        app="the Brightwave Home app",
        plan="Chorus Music Unlimited",
        symptoms=("doesn't respond to voice commands", "crackles at any volume", "keeps losing its Wi-Fi connection"),
        fix="hold the mute and volume-down buttons together for 10 seconds until the ring turns orange, then add it again in the Brightwave Home app",
        data="your voice-command history and playlists",
        export_path="the Brightwave Home app under Settings > Privacy > Voice History > Export",
        how_to=(
            ("group two speakers for the same music", "open the Brightwave Home app, go to Rooms > Speaker Groups, tap New Group, select both speakers and tap Save; then play music to the group"),
            ("set a morning alarm", "say \"Chorus, set an alarm for 7 a.m. on weekdays\", or open the Brightwave Home app and go to Devices > Chorus Mini > Alarms > Add"),
        ),
    ),
    Product(
        name="BrewMate smart coffee maker",
        nickname="BrewMate",
        price="$119.00",
        app="the BrewMate app",
        plan="BrewMate Bean Club",
        symptoms=("leaks water under the base", "stops brewing halfway", "won't heat the water"),
        fix="run a descaling cycle: fill the tank with equal parts water and white vinegar, hold the Clean button for 3 seconds, then run two cycles of plain water",
        data="your brew history and saved recipes",
        export_path="the BrewMate app under Profile > Data > Export",
        how_to=(
            ("schedule coffee for the morning", "open the BrewMate app, go to Schedule, tap Add, pick the time, strength and cup size, and leave the carafe and fresh grounds in place the night before"),
            ("change the brew strength", "press the Strength button until Bold or Mild lights up, or in the BrewMate app go to Brew > Strength; the setting is kept for the next brew"),
        ),
    ),
)

ISSUE_TYPES = (
    "double_charge",
    "login_password",
    "late_delivery",
    "defective_unit",
    "refund",
    "how_to",
    "cancel_subscription",
    "data_export",
)
TONES = ("angry", "polite", "confused", "terse", "urgent")

FIRST_NAMES = (
    "Alice", "Bilal", "Carmen", "Dmitri", "Elena", "Farah", "George", "Hana", "Ivan", "Julia",
    "Kwame", "Laura", "Mateo", "Nadia", "Omar", "Priya", "Quentin", "Rosa", "Samuel", "Tanya",
    "Umar", "Valerie", "Wei", "Ximena", "Yusuf", "Zoe", "Oliver", "Grace", "Henrik", "Lucia",
)
LAST_NAMES = (
    "Anderson", "Baptiste", "Chen", "Dubois", "Eriksen", "Fernandez", "Gupta", "Hoffmann", "Ito",
    "Jensen", "Kowalski", "Lopez", "Mensah", "Novak", "Okafor", "Patel", "Rossi", "Schmidt",
    "Tanaka", "Walker",
)
AGENTS = ("Maya", "Daniel", "Sofia", "James", "Leila")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December")

# Customer messages: {product}, {order}, {date}, {amount}, {symptom}, {task}, {plan}, {data}, {email},
# {days} are filled per ticket. Terse customers use the short forms.
ISSUE_PHRASINGS: dict[str, tuple[str, ...]] = {
    "double_charge": (
        "I was charged twice for my {product} (order {order}). My card statement shows two payments of {amount} on {date}.",
        "My bank shows the same {amount} payment two times for order {order}, placed on {date}. I only bought one {product}.",
        "Please check order {order}: I bought a single {product} on {date} but you took {amount} from my account twice.",
    ),
    "login_password": (
        "I can't log in to {app} anymore. It says my password is wrong, and the reset email never arrives at {email}.",
        "My account is locked after too many password attempts and I can't get into {app} to manage my {product}.",
        "I forgot my password and the reset link for {email} says it has expired. I need to get into {app}.",
    ),
    "late_delivery": (
        "My order {order} for the {product} was supposed to arrive {days} days ago and tracking hasn't moved since {date}.",
        "Where is my {product}? Order {order}, placed on {date}, and it still hasn't been delivered.",
        "The tracking page for order {order} has said 'in transit' since {date}. It's now {days} days late.",
    ),
    "defective_unit": (
        "My new {product} {symptom}. I bought it on {date}, order {order}.",
        "The {product} I received (order {order}) {symptom}. I've only had it since {date}.",
        "Since {date} my {product} {symptom}. Order number is {order}.",
    ),
    "refund": (
        "I'd like a refund for my {product}. Order {order}, bought on {date}. It's just not what I needed.",
        "Can I get my money back for order {order}? I bought the {product} on {date} and I've decided not to keep it.",
        "I want a refund of {amount} for the {product} from order {order}, purchased on {date}.",
    ),
    "how_to": (
        "How do I {task} on my {product}?",
        "I just got my {product}. Can you explain how to {task}?",
        "Is there a way to {task} with the {product}? I couldn't find it in the manual.",
    ),
    "cancel_subscription": (
        "Please cancel my {plan} subscription for my {product}. I don't want to be billed again.",
        "I want to stop my {plan} plan. How do I cancel before the next charge on {date}?",
        "I no longer need {plan} on my {product}. Cancel it, please, and confirm there will be no more charges.",
    ),
    "data_export": (
        "I'd like a copy of {data} from my {product}. How can I export it?",
        "Before I switch devices I need to download {data}. Is that possible for my {product}?",
        "Can you send me an export of {data}? I use the {product}.",
    ),
}
TERSE_PHRASINGS: dict[str, tuple[str, ...]] = {
    "double_charge": ("Charged twice. Order {order}, {amount}, {date}. Fix it.", "Double charge on order {order}. Refund one."),
    "login_password": ("Can't log in to {app}. Reset email not coming.", "Locked out of {app}. Need access."),
    "late_delivery": ("Order {order} late. Where is it?", "{product} not delivered. Order {order}."),
    "defective_unit": ("{product} {symptom}. Order {order}.", "Faulty {product}: {symptom}. Order {order}."),
    "refund": ("Refund order {order}, please.", "Want refund for {product}, order {order}."),
    "how_to": ("How to {task} on {product}?", "{product}: how do I {task}?"),
    "cancel_subscription": ("Cancel {plan}. No more charges.", "Stop my {plan} plan."),
    "data_export": ("Need export of {data}.", "Export my {product} data."),
}
TONE_OPENINGS: dict[str, tuple[str, ...]] = {
    "angry": ("This is ridiculous.", "I am really fed up.", "Honestly, this is unacceptable."),
    "polite": ("Hello, I hope you're well.", "Hi there, thank you for your help.", "Good morning,"),
    "confused": ("Hi, I'm a bit lost here.", "Sorry, I'm not sure what's going on.", "Hello, I don't really understand this."),
    "terse": ("",),
    "urgent": ("URGENT:", "I need help right away.", "Please treat this as urgent."),
}
TONE_CLOSINGS: dict[str, tuple[str, ...]] = {
    "angry": ("I expect this sorted immediately.", "Fix this or I'm going elsewhere.", "I've wasted enough time on this."),
    "polite": ("Thanks so much in advance.", "I appreciate your help.", "Many thanks."),
    "confused": ("Did I do something wrong?", "What am I supposed to do now?", "Could you explain it simply?"),
    "terse": ("",),
    "urgent": ("I need this resolved today.", "Please reply as soon as possible.", "This can't wait until next week."),
}
# One sentence of empathy per tone: the reply acknowledges how the customer feels.
EMPATHY: dict[str, str] = {
    "angry": "I'm sorry for the frustration this has caused, and I understand why you're upset.",
    "polite": "Thank you for getting in touch, and for your patience.",
    "confused": "No worries at all, I'll explain exactly what happened and what to do next.",
    "terse": "Thanks for the details.",
    "urgent": "I understand this is time-sensitive, so I've handled your request straight away.",
}
# The body of each reply: what the agent did, then product-specific steps.
RESOLUTIONS: dict[str, str] = {
    "double_charge": (
        "I checked order {order} and can see the {product} was charged twice on {date}. I've refunded "
        "the duplicate payment of {amount}, and it will be back on your statement within 3-5 business "
        "days. Your original order is not affected, so there's nothing else you need to do."
    ),
    "login_password": (
        "I've cleared the lock on your account and sent a fresh reset link to {email}; it stays valid "
        "for 30 minutes. Open it on the device you use for {app}, choose a new password, and sign in. "
        "If the email doesn't appear, please check your spam folder."
    ),
    "late_delivery": (
        "Order {order} was held up at the carrier's depot after {date}. I've upgraded it to express "
        "shipping at no cost, so your {product} should arrive within 2 business days, and you'll get "
        "a new tracking link by email as soon as it moves."
    ),
    "defective_unit": (
        "Please try this first: {fix}. If the {product} still misbehaves, I've already opened a free "
        "replacement under order {order}; use the prepaid return label attached to this email and the "
        "new unit ships as soon as the old one is scanned."
    ),
    "refund": (
        "I've approved a full refund of {amount} for order {order}. Please pack the {product} with its "
        "accessories and drop it off with the prepaid label attached to this email. The money goes back "
        "to your original payment method within 5 business days of the return arriving."
    ),
    "how_to": "Here's how to {task}: {steps}. Your settings are saved to your account, so you only need to do this once.",
    "cancel_subscription": (
        "I've cancelled your {plan} subscription for the {product}, and you won't be charged again. You "
        "keep every {plan} feature until the end of the current billing period on {date}, and your "
        "{product} keeps working normally after that."
    ),
    "data_export": (
        "You can download {data} yourself: go to {export_path} and tap Request Export. We prepare a "
        "ZIP file and email you a download link within 24 hours; the link stays active for 7 days."
    ),
}


# Software has no unit to send back: these replace RESOLUTIONS for products with is_software.
SOFTWARE_RESOLUTIONS: dict[str, str] = {
    "defective_unit": (
        "Please try this first: {fix}. If the {product} still fails, choose Help > Send Diagnostics so "
        "our engineers can see the exact error, and I've added one free month of {plan} to your account "
        "for the trouble."
    ),
    "refund": (
        "I've approved a full refund of {amount} for order {order} and closed the {product} licence on your account, "
        "so there's nothing to send back. The money goes back to your original payment method within 5 "
        "business days, and your backed-up files stay downloadable for 30 days."
    ),
}


@dataclass(frozen=True)
class SupportTicket:
    """One customer message and the agent's reply."""

    prompt: str  # the customer's message, signed with their name
    response: str  # the agent's reply in house style
    product: str  # Product.name
    issue_type: str  # one of ISSUE_TYPES
    tone: str  # one of TONES
    customer: str  # the customer's first name (the reply greets them with it)
    order_number: str  # "BW-123456"; appears in prompt and reply when the issue involves an order


def _ticket(rng: random.Random) -> SupportTicket:
    product = rng.choice(PRODUCTS)
    issue_type = rng.choice([issue for issue in ISSUE_TYPES if not (product.is_software and issue == "late_delivery")])
    tone = rng.choice(TONES)
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    task, steps = rng.choice(product.how_to)
    slots = {
        "product": product.name,
        "order": f"BW-{rng.randrange(100000, 1000000)}",
        "date": f"{rng.choice(MONTHS)} {rng.randint(1, 28)}",
        "amount": product.price,
        "symptom": rng.choice(product.symptoms),
        "task": task,
        "steps": steps,
        "plan": product.plan,
        "data": product.data,
        "export_path": product.export_path,
        "fix": product.fix,
        "app": product.app,
        "email": f"{first.lower()}.{last.lower()}@example.com",
        "days": str(rng.randint(3, 12)),
    }
    # Customers write the short product name; the agent always uses the full one.
    customer_slots = {**slots, "product": product.nickname}
    phrasings = TERSE_PHRASINGS if tone == "terse" else ISSUE_PHRASINGS
    body = rng.choice(phrasings[issue_type]).format(**customer_slots)
    body = body[0].upper() + body[1:]
    opening, closing = rng.choice(TONE_OPENINGS[tone]), rng.choice(TONE_CLOSINGS[tone])
    signature = f"{first}" if tone == "terse" else f"{first} {last}"
    prompt = " ".join(part for part in (opening, body, closing) if part) + f"\n\n{signature}"

    reference = f"BWT-{rng.randrange(100000, 1000000)}"
    agent = rng.choice(AGENTS)
    resolutions = {**RESOLUTIONS, **SOFTWARE_RESOLUTIONS} if product.is_software else RESOLUTIONS
    response = (
        f"Hi {first},\n\n"
        f"{EMPATHY[tone]} {resolutions[issue_type].format(**slots)}\n\n"
        f"Your ticket reference is {reference}; just reply to this email if anything else comes up.\n\n"
        f"Best regards,\n{agent}, {SIGN_OFF}"
    )
    return SupportTicket(prompt, response, product.name, issue_type, tone, first, slots["order"])


def generate_support_tickets(n: int, seed: int) -> list[SupportTicket]:
    """`n` tickets drawn uniformly over products, issue types and tones; the same seed gives the same list."""
    if n < 0:
        raise ForgetlessError(f"number of support tickets must be >= 0, got {n}")
    rng = random.Random(seed)
    return [_ticket(rng) for _ in range(n)]


def support_splits(n_train: int = 800, n_heldout: int = 120) -> tuple[list[SupportTicket], list[SupportTicket]]:
    """Train tickets (seed 0) and held-out tickets (seed 1) whose prompts never occur in train."""
    train = generate_support_tickets(n_train, seed=0)
    seen = {ticket.prompt for ticket in train}
    heldout: list[SupportTicket] = []
    # Draw from seed 1 until enough unseen prompts are found; collisions are rare (random order
    # numbers), so twice the need is plenty, and the prefix of a seed's stream is always the same.
    for ticket in generate_support_tickets(2 * n_heldout + 10, seed=1):
        if len(heldout) == n_heldout:
            break
        if ticket.prompt not in seen:
            seen.add(ticket.prompt)
            heldout.append(ticket)
    if len(heldout) < n_heldout:
        raise ForgetlessError(f"could not draw {n_heldout} held-out tickets distinct from the {n_train} training tickets")
    return train, heldout


def _addressed_to(reply: SupportTicket, ticket: SupportTicket) -> str:
    """`reply`'s text re-addressed to `ticket`'s customer and order, so a name or order number never gives the answer away."""
    text = reply.response.replace(f"Hi {reply.customer},", f"Hi {ticket.customer},", 1)
    return text.replace(reply.order_number, ticket.order_number)


def support_multiple_choice(tickets: list[SupportTicket], seed: int = 0) -> list[dict]:
    """Pick-the-right-reply questions: `{"prompt", "choices" (4 replies), "answer", "issue_types"}`.

    The three distractors are replies to other tickets of a different issue type, from the same
    product when at least three such tickets exist, re-addressed to this ticket's customer and
    order number. `issue_types[i]` is the issue type choice i answers.
    """
    rng = random.Random(seed)
    items = []
    for ticket in tickets:
        other_issues = [t for t in tickets if t.issue_type != ticket.issue_type]
        same_product = [t for t in other_issues if t.product == ticket.product]
        pool = same_product if len({t.response for t in same_product}) >= 3 else other_issues
        candidates: dict[str, SupportTicket] = {}
        for other in pool:
            candidates.setdefault(_addressed_to(other, ticket), other)
        if len(candidates) < 3:
            raise ForgetlessError("support_multiple_choice needs tickets of at least two issue types and 4 distinct replies")
        picked = rng.sample(sorted(candidates), 3)
        choices = [(ticket.response, ticket.issue_type)] + [(text, candidates[text].issue_type) for text in picked]
        rng.shuffle(choices)
        items.append(
            {
                "prompt": ticket.prompt,
                "choices": [text for text, _ in choices],
                "answer": [text for text, _ in choices].index(ticket.response),
                "issue_types": [issue for _, issue in choices],
            }
        )
    return items
