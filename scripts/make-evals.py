#!/usr/bin/env python3
"""Writes joule's small eval sets (profiles/evals/*.jsonl) from templates, with a fixed seed.

The items are written for joule and describe fictional people, places and products, so a model
cannot answer from memory and no third-party text is copied. Re-running the script gives the
same files byte for byte. Licence: the project's own (MIT OR Apache-2.0).
"""
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "profiles" / "evals"
N = 60

FIRST = ["Ana", "Bram", "Chen", "Dalia", "Emeka", "Farah", "Goran", "Hana", "Ivo", "Jun",
         "Kira", "Luis", "Mira", "Nils", "Oona", "Pavel", "Qadir", "Rosa", "Sami", "Tova"]
LAST = ["Okafor", "Lindqvist", "Moreau", "Tanaka", "Silva", "Novak", "Haddad", "Brennan",
        "Kowalski", "Iyer", "Vargas", "Holm", "Adeyemi", "Ferreira", "Quinn", "Sato"]
COMPANIES = ["Brightwell Supplies", "Corvid Analytics", "Delta Marrow Ltd", "Fernhill Printing",
             "Gantry Logistics", "Harbor & Finch", "Ironleaf Software", "Juniper Office Co",
             "Kestrel Catering", "Lumen Parts GmbH", "Moss Valley Farms", "Northgate Cleaning",
             "Orchid Media", "Pillar Security", "Quarry Lane Tools", "Redfern Electrical"]
PRODUCTS = ["router", "standing desk", "label printer", "coffee machine", "headset",
            "monitor arm", "scanner", "projector", "keyboard", "backup drive"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]


def name(r):
    return f"{r.choice(FIRST)} {r.choice(LAST)}"


# --- classify: route a support message to one of five queues (exact match) ----------------
LABELS = ["billing", "technical", "account", "shipping", "feedback"]
CLASSIFY = {
    "billing": [
        "I was charged twice for my {product} order this month. Please refund the extra {amount}.",
        "My invoice {number} shows {amount} but the quote said less. Why is the price different?",
        "The card payment for my subscription failed and now there is a late fee of {amount}.",
        "Can you send me a corrected invoice? The VAT on {number} looks wrong.",
        "I cancelled last week but you still took {amount} from my account today.",
        "Please change my billing plan from monthly to yearly and tell me the new price.",
    ],
    "technical": [
        "The {product} keeps disconnecting every few minutes since the last firmware update.",
        "Your app crashes as soon as I open the settings page on my phone.",
        "I get error code {code} when I try to sync my {product} with the desktop software.",
        "The {product} turns on but the screen stays black. I already tried restarting it.",
        "After installing version {version} the export button does nothing at all.",
        "The {product} makes a loud clicking noise and then stops responding.",
    ],
    "account": [
        "I forgot my password and the reset email never arrives. My username is {user}.",
        "Please delete my account and all the data you hold about me.",
        "How do I change the email address on my profile to {user}@example.org?",
        "My account was locked after too many login attempts. Can you unlock it?",
        "I want to add my colleague {person} as a second user on our team account.",
        "Someone else seems to have logged into my account from another country.",
    ],
    "shipping": [
        "My {product} order {number} was supposed to arrive on {day} {month} and it has not.",
        "The tracking page for order {number} has not changed for six days.",
        "The parcel arrived with the box crushed and the {product} inside is broken.",
        "Can you deliver order {number} to my office instead of my home address?",
        "I received a {product} but I ordered something else. How do I swap it?",
        "Do you ship to Iceland, and how long would delivery of a {product} take?",
    ],
    "feedback": [
        "Just wanted to say the new {product} is excellent. Setup took two minutes.",
        "Your support agent {person} was very helpful yesterday, thank you.",
        "It would be great if the {product} came in a darker colour.",
        "I love the redesign of the dashboard, it is much easier to read now.",
        "Suggestion: let us export reports as spreadsheets, not only as PDF.",
        "The manual for the {product} is confusing; pictures would help a lot.",
    ],
}


def classify(r):
    items = []
    plan = [LABELS[i % len(LABELS)] for i in range(N)]
    r.shuffle(plan)
    for i, label in enumerate(plan, 1):
        text = r.choice(CLASSIFY[label]).format(
            product=r.choice(PRODUCTS), amount=f"{r.randint(9, 480)}.{r.randint(0, 99):02d} EUR",
            number=f"INV-{r.randint(10000, 99999)}", code=f"E{r.randint(100, 999)}",
            version=f"{r.randint(2, 9)}.{r.randint(0, 20)}", user=f"{r.choice(FIRST).lower()}{r.randint(1, 99)}",
            person=name(r), day=r.randint(1, 28), month=r.choice(MONTHS))
        items.append({"id": f"classify-{i:03d}", "text": text, "labels": LABELS, "label": label})
    return items


# --- extract: fields of an invoice e-mail as JSON (schema validity plus field match) -------
EXTRACT_TEMPLATES = [
    "Hello,\nplease find attached invoice {number} from {vendor}, dated {date_text}. "
    "The amount due is {total} {currency}, payable within 30 days.\nRegards,\n{person}",
    "Invoice {number}\nIssued by: {vendor}\nDate: {date_text}\nItems: {qty} x {product}\n"
    "Total due: {currency} {total}\nContact: {person}",
    "Dear customer, {vendor} thanks you for your order of {qty} {product}(s). Our invoice "
    "number is {number}, issued {date_text}, for a total of {total} {currency}.",
    "Reminder from {vendor}: invoice {number} ({date_text}) for {total} {currency} is still "
    "open. Questions? Ask {person}.",
]


def extract(r):
    schema = {
        "type": "object",
        "required": ["vendor", "invoice_number", "date", "total", "currency"],
        "properties": {
            "vendor": {"type": "string"},
            "invoice_number": {"type": "string"},
            "date": {"type": "string", "pattern": "^\\d{4}-\\d{2}-\\d{2}$"},
            "total": {"type": "number"},
            "currency": {"type": "string", "enum": ["EUR", "USD", "GBP", "CHF"]},
        },
    }
    items = []
    for i in range(1, N + 1):
        year, month, day = r.randint(2023, 2026), r.randint(1, 12), r.randint(1, 28)
        total = round(r.uniform(20, 9000), 2)
        currency = r.choice(["EUR", "USD", "GBP", "CHF"])
        number = f"{r.choice(['INV', 'F', 'BILL', 'NR'])}-{year}-{r.randint(100, 9999)}"
        vendor = r.choice(COMPANIES)
        date_text = r.choice([f"{day} {MONTHS[month - 1]} {year}", f"{MONTHS[month - 1]} {day}, {year}",
                              f"{year}-{month:02d}-{day:02d}"])
        text = r.choice(EXTRACT_TEMPLATES).format(
            number=number, vendor=vendor, date_text=date_text, total=f"{total:,.2f}",
            currency=currency, person=name(r), qty=r.randint(1, 40), product=r.choice(PRODUCTS))
        items.append({"id": f"extract-{i:03d}", "text": text, "schema": schema, "expected": {
            "vendor": vendor, "invoice_number": number, "date": f"{year}-{month:02d}-{day:02d}",
            "total": total, "currency": currency}})
    return items


# --- summarize: a one-sentence summary of meeting notes (ROUGE-L against a reference) -------
TEAMS = ["platform", "billing", "mobile", "data", "support", "design", "security", "sales"]
TOPICS = [("the slow checkout page", "move image resizing to a background job", "ship the change"),
          ("rising cloud costs", "switch the nightly batch jobs to spot instances", "draft the migration plan"),
          ("the onboarding survey", "shorten the survey to five questions", "rewrite the questions"),
          ("flaky integration tests", "quarantine the three worst tests", "fix the test fixtures"),
          ("the Q3 hiring plan", "hire two backend engineers first", "publish the job ads"),
          ("customer churn in the north region", "call every account that cancelled", "prepare the call list"),
          ("the password reset outage", "add an alert on email delivery failures", "write the postmortem"),
          ("the new pricing page", "test two layouts with real visitors", "set up the experiment"),
          ("late supplier deliveries", "add a second supplier for cables", "contact three suppliers"),
          ("the office move", "keep the old office until March", "negotiate the lease extension")]
FILLER = ["Attendance was good and the meeting started on time.",
          "Several people shared numbers from the last two weeks.",
          "There was a long discussion of alternatives that were rejected as too expensive.",
          "Someone asked whether the issue affects other teams; nobody was sure.",
          "Coffee ran out halfway through.",
          "The previous action items were reviewed and most were done."]


def summarize(r):
    items = []
    for i in range(1, N + 1):
        team = r.choice(TEAMS)
        topic, decision, action = r.choice(TOPICS)
        owner = name(r)
        weekday = r.choice(["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"])
        deadline = r.choice(["Friday", "next Monday", "the end of the month", "next week", "June 30"])
        filler = r.sample(FILLER, 3)
        text = (f"Notes from the {team} team meeting on {weekday}. The main topic was {topic}. "
                f"{filler[0]} {filler[1]} After weighing the options, the team decided to {decision}. "
                f"{filler[2]} {owner} agreed to {action} by {deadline}.")
        reference = f"The {team} team decided to {decision}; {owner} will {action} by {deadline}."
        items.append({"id": f"summarize-{i:03d}", "text": text, "reference": reference})
    return items


# --- answer: a question about a short fictional passage (token F1 against the answers) -----
PLACES = ["Orvan", "Tesmar", "Kiloby", "Varrin", "Ostley", "Brauna", "Celdor", "Mirefield",
          "Quell", "Sarnow", "Tibbet", "Ulvik", "Wrenna", "Yarrow", "Zelm", "Ashcombe"]


def answer(r):
    items = []
    kinds = ["lake", "bridge", "festival", "company", "library", "ship"]
    for i in range(1, N + 1):
        place, other = r.sample(PLACES, 2)
        kind = kinds[(i - 1) % len(kinds)]
        person = name(r)
        year = r.randint(1820, 2015)
        n1, n2 = r.randint(3, 95), r.randint(100, 900)
        if kind == "lake":
            context = (f"Lake {place} lies in the hills north of {other}. It covers {n1} square kilometres "
                       f"and its deepest point is {n2} metres. The lake was first mapped in {year} by {person}.")
            qa = r.choice([(f"How deep is Lake {place} at its deepest point?", [f"{n2} metres", f"{n2} meters", f"{n2} m", str(n2)]),
                           (f"Who first mapped Lake {place}?", [person]),
                           (f"In which year was Lake {place} first mapped?", [str(year)])])
        elif kind == "bridge":
            context = (f"The {place} Bridge crosses the river at {other}. Designed by {person}, it opened in {year} "
                       f"and is {n2} metres long. It carries {n1} thousand vehicles a day.")
            qa = r.choice([(f"Who designed the {place} Bridge?", [person]),
                           (f"When did the {place} Bridge open?", [str(year)]),
                           (f"How long is the {place} Bridge?", [f"{n2} metres", f"{n2} meters", f"{n2} m", str(n2)])])
        elif kind == "festival":
            month = r.choice(MONTHS)
            context = (f"The {place} Lantern Festival is held every {month} in the town of {other}. It was founded "
                       f"in {year} by the baker {person}, and about {n2} lanterns are lit on its last night.")
            qa = r.choice([(f"In which month is the {place} Lantern Festival held?", [month]),
                           (f"Who founded the {place} Lantern Festival?", [person, f"the baker {person}"]),
                           (f"Where is the {place} Lantern Festival held?", [other, f"the town of {other}"])])
        elif kind == "company":
            product = r.choice(PRODUCTS)
            context = (f"{place} Works is a small firm in {other} that makes {product}s. It was started in {year} "
                       f"by {person} and now employs {n1} people.")
            qa = r.choice([(f"What does {place} Works make?", [f"{product}s", product]),
                           (f"How many people does {place} Works employ?", [str(n1), f"{n1} people"]),
                           (f"Who started {place} Works?", [person])])
        elif kind == "library":
            context = (f"The public library of {place} holds {n2} thousand books. Its reading room, added in {year}, "
                       f"was paid for by {person}. The library is closed on {r.choice(['Mondays', 'Sundays', 'Wednesdays'])}.")
            closed = context.rsplit(" ", 1)[1].rstrip(".")
            qa = r.choice([(f"On which day is the library of {place} closed?", [closed, closed[:-1]]),
                           (f"Who paid for the reading room of the {place} library?", [person]),
                           (f"How many books does the library of {place} hold?", [f"{n2} thousand", f"{n2} thousand books", f"{n2},000"])])
        else:
            context = (f"The {place} was a cargo ship launched at {other} in {year}. Her first captain was {person}. "
                       f"She carried up to {n2} tonnes of grain and sank in a storm after {n1} years of service.")
            qa = r.choice([(f"Who was the first captain of the {place}?", [person]),
                           (f"Where was the {place} launched?", [other]),
                           (f"How many tonnes of grain could the {place} carry?", [f"{n2} tonnes", str(n2)])])
        question, answers = qa
        items.append({"id": f"answer-{i:03d}", "context": context, "question": question, "answers": answers})
    return items


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for task, make in [("classify", classify), ("extract", extract), ("summarize", summarize), ("answer", answer)]:
        items = make(random.Random(f"joule-{task}-v1"))
        with open(OUT / f"{task}.jsonl", "w") as f:
            for item in items:
                f.write(json.dumps(item, ensure_ascii=False) + "\n")
        print(f"{task}: {len(items)} items")


if __name__ == "__main__":
    main()
