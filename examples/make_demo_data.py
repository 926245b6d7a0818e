"""Generate loraflow's shipped demo data: a Fernbank support-ticket router with 24 categories.

Run from the repository root (writes ``examples/demo/`` and ``examples/bad/``)::

    .venv/bin/python examples/make_demo_data.py            # or: --out DIR to write DIR/demo and DIR/bad

The output is committed; this script is how it was made. It is deterministic: one seeded ``random.Random``,
no set iteration, no clock, so the same script writes the same bytes anywhere (``tests/test_demo_data.py``
checks this). Only the standard library is used.

The task: a ticket (the user turn) goes in, its category label comes out (the assistant turn is exactly one
label from ``labels.json``); every record has the same system prompt (``system_prompt.txt``). Tickets are built
from several templates per category, slot fillers (merchants, amounts in many currencies and formats, dates,
order ids, channels, Fernbank product names) and optional greetings, sign-offs and PII sentences, so a model has
to generalise rather than memorise a phrase.

The same task is written in the three input formats loraflow ingests, and the data is deliberately dirty so
every pipeline stage has real work; ``MANIFEST.json`` holds the planted counts (counts only, no text):

* PII in ~30 % of tickets (names, emails, phones in several countries' formats, Luhn-valid test card numbers,
  checksummed IBANs, street addresses, dates of birth), also inside records that have no usable assistant turn
  and inside malformed lines, so quarantine paths must scrub or drop text too. Non-PII numbers that must
  survive scrubbing (order ids like ``ORD-88231``, amounts, transaction dates) and the brand names an allow-list
  must keep ("Fernbank", "Fernbank Plus", "FernPay"...) appear throughout.
* exact duplicates (~5 %; half differ only in case / whitespace) and near duplicates (~5 %: one or two small
  edits such as a typo, a "hi," prefix, a "thanks" suffix or changed punctuation), within and across files.
* malformed JSONL lines (truncated JSON, a line that is not an object, a line in Latin-1 rather than UTF-8).
* contract violations (empty assistant answer, a label outside the label set, a record ending with a user turn,
  an overlong ticket of far more than 600 tokens, a non-string content value).
* conflicting targets: the same ticket text with two different labels, in two files.

Also written: ``demo/feedback_seed.jsonl``, four months (2026-07-01 .. 2026-10-31) of production feedback rows
for the same task (good, bad, corrected and flagged answers), and three bad inputs under ``bad/`` for the
ingest error-path tests.
"""

import argparse
import csv
import io
import json
import random
import re
import unicodedata
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

SEED = 20261122
BRAND = "Fernbank"
SYSTEM_PROMPT = "You are a support-ticket router for Fernbank. Reply with the ticket's category only."

# Rows per file, every kind of row included (sized so that after dedup and the 10 % hash test split there are
# ~1,000 training rows: CPU LoRA training runs ~3 rows/s, i.e. ~6 minutes an epoch).
N_ROWS = {"chat": 700, "alpaca": 400, "csv": 300}
# Planted dirt per file. exact_dups/near_dups draw their source row from the files named in *_from.
PLAN = {
    "chat": {"exact": 35, "near": 35, "exact_from": ("chat",), "near_from": ("chat",), "conflicts": 0},
    "alpaca": {
        "exact": 20,
        "near": 20,
        "exact_from": ("chat", "alpaca"),
        "near_from": ("chat", "alpaca"),
        "conflicts": 2,
    },
    "csv": {
        "exact": 15,
        "near": 15,
        "exact_from": ("chat", "alpaca", "csv"),
        "near_from": ("chat", "alpaca", "csv"),
        "conflicts": 2,
    },
}
PII_SHARE = 0.30
CSV_COLUMNS = ["ticket_text", "queue", "opened_at"]  # column map: ticket_text -> user, queue -> assistant
# Generated tickets of one category whose character-5-gram Jaccard with an earlier one reaches this are redrawn,
# so the only near duplicates in the data are the planted ones (MinHash dedup typically flags ~0.8).
ACCIDENTAL_DUP_JACCARD = 0.6
# Every planted near duplicate has at least this character-5-gram Jaccard with its source.
NEAR_DUP_MIN_JACCARD = 0.75

TRAIN_START = datetime(2026, 1, 5)
TRAIN_END = datetime(2026, 6, 30, 23, 59, 59)
FEEDBACK_START = datetime(2026, 7, 1)
FEEDBACK_END = datetime(2026, 10, 31, 23, 59, 59)
N_FEEDBACK = 300

# ------------------------------------------------------------------------------------------- the task

TEMPLATES: dict[str, list[str]] = {
    "card_lost_or_stolen": [
        "I think I lost my {card} somewhere in {city} {when}. Can you freeze it?",
        "My wallet was stolen {when} with my {card} inside, please block it before someone uses it.",
        "Can't find my {card} anywhere since {when}. How do I cancel it and get a new one?",
        "Someone pickpocketed me on the train and took my {card}. What do I do now?",
        "I left my {card} in a taxi in {city}. Please stop it and send a replacement.",
        "lost my card, need to report it. last used it at {merchant} {when}",
        "My bag got stolen in {city}, my {product} card was in it. Please cancel it asap.",
        "How do I report a stolen card? Mine went missing {when} and I'm worried.",
    ],
    "card_not_arrived": [
        "I ordered a new {card} {days} ago and it still hasn't arrived.",
        "Where is my {product} card? The app said it was dispatched {when} but nothing came.",
        "My replacement card never showed up. It has been {days}.",
        "Still waiting for my {card} to be delivered, can you check the tracking?",
        "The card I requested {when} hasn't come in the post. Should I order another one?",
        "how long does delivery of a new card take? been waiting {days} already",
        "My card delivery to {country} seems stuck, status says shipped since {when}.",
    ],
    "card_declined": [
        "My {card} was declined at {merchant} {when} even though I have money in the account.",
        "Why does my card keep getting declined online? Tried paying {amount} to {merchant}.",
        "Card got rejected at the till in {city}, paying {amount}. Balance is fine.",
        "Payment of {amount} at {merchant} failed with 'card declined'. What's wrong?",
        "I can't pay with {pay_method}, every transaction is declined since {when}.",
        "my card doesnt work in {country}, all payments declined",
        "Tried to buy something for {amount} on {merchant} and it was refused twice.",
        "The terminal at {merchant} said declined {when} but my {product} card is active.",
    ],
    "pin_blocked": [
        "I entered the wrong PIN three times and now my card is blocked.",
        "My PIN is locked after too many attempts at the ATM in {city}. How do I unblock it?",
        "Forgot my PIN and now the card says PIN blocked. Can you reset it?",
        "ATM swallowed my attempts, says PIN tries exceeded. Need to unblock my {card}.",
        "how do i unlock my pin?? typed it wrong at {merchant} {when}",
        "Can I see or change my PIN in the app? It got blocked {when}.",
        "My {card} PIN got blocked and I need cash today, please help.",
        "PIN blocked after I mixed up my old and new PIN at {merchant}.",
        "Three wrong PIN attempts in {city} and now the ATM won't accept my {card}.",
        "I need to reset my PIN, it's blocked since {when}. I'm on {device}.",
    ],
    "refund_not_received": [
        "{merchant} says they refunded {amount} on {date} but I haven't received it.",
        "Still no refund for order {order} from {merchant}. It's been {days}.",
        "I returned an item to {merchant} {when} and the refund of {amount} hasn't shown up.",
        "When will my refund appear? {merchant} confirmed it for {order}.",
        "The merchant issued a refund of {amount} but my balance hasn't changed after {days}.",
        "refund from {merchant} missing, they sent it {when}",
        "Cancelled my booking with {merchant} and was promised {amount} back. Nothing yet.",
    ],
    "duplicate_charge": [
        "I was charged twice for the same purchase at {merchant}, {amount} each.",
        "There are two identical transactions of {amount} from {merchant} on {date}.",
        "Double charge on my account for order {order}. Please reverse one of them.",
        "{merchant} took {amount} from my card twice {when}. I only bought it once.",
        "My statement shows the same payment to {merchant} two times.",
        "got billed 2x for {amount} at {merchant}?",
        "One purchase, two charges of {amount} via {pay_method}. Can you fix it?",
    ],
    "unrecognised_transaction": [
        "There's a payment of {amount} to {merchant} on {date} that I don't recognise.",
        "I don't know what this charge is: {amount}, merchant name looks strange.",
        "A transaction I never made showed up {when} for {amount} in {country}.",
        "Who is {merchant}? They charged me {amount} and I never shopped there.",
        "Suspicious payment on my {product} account, {amount} on {date}. Not me.",
        "there is a charge i didnt make, {amount} {when}",
        "My app shows a card payment in {city} but I was home all day {when}.",
        "I see several small payments to an unknown merchant since {when}. Is my card compromised?",
    ],
    "transfer_pending": [
        "My transfer of {amount} has been pending since {date}. When will it go through?",
        "I sent money to my landlord {when} and it still shows as pending.",
        "Why is my bank transfer still processing after {days}?",
        "Transfer to {country} stuck in pending, reference {order}.",
        "The {amount} I sent {when} hasn't reached the recipient, status says in progress.",
        "how long do transfers take? mine is pending since {when}",
        "Outgoing payment of {amount} is still pending, my friend hasn't got it.",
    ],
    "transfer_failed": [
        "My transfer of {amount} failed {when} and I don't know why.",
        "I tried to send {amount} to {country} but the transfer was rejected.",
        "Bank transfer failed with an error in the app. Reference {order}.",
        "Payment to my friend bounced back {when}, says transfer failed.",
        "Why did my transfer get cancelled? I had enough balance for {amount}.",
        "transfer keeps failing when I send money {channel}",
        "The {amount} transfer I made on {date} was returned to my account.",
    ],
    "wrong_recipient": [
        "I sent {amount} to the wrong person by mistake {when}. Can I get it back?",
        "I typed the wrong account number and the transfer of {amount} went to a stranger.",
        "Accidentally paid the wrong contact on {product}. How do I recall the payment?",
        "Made a transfer to an old account of my brother, wrong recipient. Please help recover {amount}.",
        "sent money to wrong iban!! {amount} on {date}",
        "I picked the wrong payee from my list and sent them {amount}.",
        "Can you reverse a payment I sent to the wrong recipient {when}?",
    ],
    "exchange_rate_question": [
        "What exchange rate do you use when I pay in {currency}?",
        "I paid {amount} in {country} and the conversion looks worse than the market rate.",
        "Why did I get a different rate for {currency} to {currency2} than shown in the app?",
        "Is there a markup on the exchange rate at weekends?",
        "How is the {currency} amount converted when I spend abroad with {product}?",
        "exchange rate on my last payment in {city} seems off",
        "Which rate applies when I exchange {currency} to {currency2} {channel}?",
    ],
    "top_up_failed": [
        "I tried to top up {amount} with my bank card but it failed.",
        "Top-up via {pay_method} didn't work {when}, money left my other account though.",
        "Why can't I add money to my {product} account? Top up keeps failing.",
        "Adding funds failed with an error, tried {amount} {channel}.",
        "top up not going through, tried 3 times",
        "My top-up of {amount} is showing as failed but my bank shows it as taken.",
        "Can't load money onto my account from my {country} card.",
    ],
    "account_locked": [
        "My account has been locked and I can't make any payments.",
        "Why is my {product} account frozen? I got a message {when}.",
        "Account suspended without warning, I need access to my money.",
        "I can't use my account, it says it's restricted for security reasons.",
        "my account is blocked since {when}, what did i do wrong",
        "You locked my account after a payment of {amount}. Please unlock it.",
        "All my cards stopped working and the app says account on hold.",
        "My account was frozen after I received {amount} from a friend in {country}.",
        "The app says my account is under review since {when}. How long will it take?",
        "I can't access my money, account restricted since {date}.",
    ],
    "change_address": [
        "I moved house and need to update my address.",
        "How do I change my home address in the app?",
        "Please update my postal address, I moved to {city} {when}.",
        "I want my new card sent to my new address, how do I change it?",
        "need to change address on my account",
        "Can I change my billing address to one in {country}?",
        "My address on file is out of date since I moved {when}.",
        "I've relocated from {city} to {city2}, how do I update my details?",
        "My statements still go to my old flat in {city}. Please change the address.",
        "Can I change my address on {device}? I can't find the option.",
        "Moving to {country} next month, do I need to update my address with you?",
    ],
    "verify_identity": [
        "The app keeps asking me to verify my identity, my ID upload failed.",
        "How do I verify my identity? My passport photo was rejected.",
        "Identity check stuck on pending for {days}.",
        "Why do I need to verify my ID again? I did it when I opened the account.",
        "selfie verification keeps failing",
        "Can I verify with a driving licence from {country} instead of a passport?",
        "Verification failed {when}, it says document unreadable.",
        "I uploaded my {doc} {when} and the check is still not done.",
        "The app rejected my {doc} from {country}, what documents do you accept?",
        "Why is my account asking for proof of identity before I can use {product}?",
        "I can't finish verification on my {device}, the camera won't open.",
    ],
    "close_account": [
        "I want to close my account and get my remaining balance back.",
        "How do I close my {product} account permanently?",
        "Please close my account, I'm moving back to {country}.",
        "I no longer need Fernbank, can you delete my account?",
        "cancel my account please",
        "What happens to my money if I close the account {when}?",
        "I'd like to close my account and cancel {product}.",
        "I'm switching banks, please close my account and send the {amount} left to my new one.",
        "How long does it take to close an account? I requested it {when}.",
        "Close my {product} account, I've been unhappy since {month}.",
    ],
    "fee_question": [
        "Why was I charged a fee of {amount} {when}?",
        "What are the fees for {product}? I see a monthly charge.",
        "There's a {amount} fee on my statement I don't understand.",
        "Do you charge fees for payments in {currency}?",
        "what is this fee on {date}",
        "How much does it cost to withdraw cash in {country} with {product}?",
        "Why did I pay a fee for a transfer {channel}?",
    ],
    "cash_withdrawal_wrong_amount": [
        "The ATM in {city} gave me less cash than I asked for, but I was charged {amount}.",
        "I withdrew {amount} but the machine only dispensed part of it.",
        "ATM didn't give me any money {when} but my account was debited.",
        "Cash machine at {merchant} charged me {amount} and gave me nothing.",
        "atm gave wrong amount of cash",
        "I took out cash in {country} and was charged more than I got.",
        "Withdrawal on {date} shows {amount} but I only received half of that.",
    ],
    "direct_debit_cancel": [
        "How do I cancel a direct debit to {merchant}?",
        "I want to stop the direct debit for my gym membership.",
        "Please cancel the direct debit to {merchant} that takes {amount} every month.",
        "Can I cancel a mandate in the app? It's for {merchant}.",
        "stop direct debit {merchant}",
        "I closed my contract with {merchant} but the direct debit is still active.",
        "Cancel all direct debits on my {product} account please.",
        "A direct debit from {merchant} for {amount} is coming on {date}, how do I stop it?",
        "I want to cancel the standing direct debit for my phone contract with {merchant}.",
        "How do I see and cancel my direct debits {channel}?",
    ],
    "loan_repayment": [
        "Can I repay my loan early without a penalty?",
        "My loan repayment of {amount} failed {when}, what happens now?",
        "How do I change the date of my monthly loan payment?",
        "I want to make an extra payment on my personal loan {order}.",
        "when is my next loan installment due",
        "I missed a loan repayment {when}. Will I be charged?",
        "How much is left to pay on my Fernbank loan?",
        "Can I pay {amount} extra towards my loan this month?",
        "My loan installment is due on {date}, can I move it to later in the month?",
        "I'd like to settle my loan early, how much would it cost?",
        "The loan repayment of {amount} was taken twice in {month}? Or is that the schedule?",
    ],
    "dispute_merchant": [
        "{merchant} never delivered my order {order} and won't answer. I want to dispute it.",
        "I paid {amount} to {merchant} for something that arrived broken. How do I open a dispute?",
        "I want to raise a chargeback against {merchant}, they refused a refund.",
        "The seller on {merchant} sent the wrong item and ignores me. Can you dispute the {amount} payment?",
        "how do i dispute a payment with a shop",
        "{merchant} cancelled my service but kept charging me. I want to dispute it.",
        "Product from {merchant} was not as described, order {order}. Please help me get my money back.",
    ],
    "crypto_question": [
        "Can I buy {coin} with my {product} account?",
        "Why can't I sell my {coin}? The button is greyed out.",
        "What are the fees for buying crypto in the app?",
        "Can I transfer my {coin} to an external wallet?",
        "crypto prices in the app differ from the exchange",
        "Is my {coin} held by Fernbank or on an exchange?",
        "I want to buy {amount} of {coin}, is there a limit?",
        "I bought {coin} {when} and it doesn't show in my portfolio.",
        "How are crypto gains on {product} taxed in {country}?",
        "Can I use {coin} to pay at {merchant}?",
    ],
    "savings_interest": [
        "What interest rate do I get on my savings pot?",
        "When is the interest on my {product} savings paid?",
        "My savings interest for {month} hasn't been credited.",
        "Did the savings rate change? I got less interest this month.",
        "how much interest on savings",
        "Is the interest on my savings account fixed or variable?",
        "I moved {amount} into savings {when}, when does it start earning interest?",
        "The interest paid in {month} was lower than the {rate}% advertised.",
        "Is the {rate}% rate on {product} savings before tax?",
        "How is interest calculated on my savings pot, daily or monthly?",
        "I didn't get any interest on my {amount} savings in {month}.",
    ],
    "app_login_problem": [
        "I can't log in to the app, it keeps saying something went wrong.",
        "The app crashes when I try to sign in on my new phone.",
        "I'm not receiving the login code by SMS.",
        "How do I log in after changing my phone? The app asks for a passcode I don't have.",
        "cant log in since the update {when}",
        "Face ID login stopped working in the Fernbank app.",
        "Login link from the email doesn't open the app, I'm stuck on the welcome screen.",
        "The app on my {device} logs me out every few minutes.",
        "I reset my passcode {when} and still can't get into the app.",
        "Sign in fails with error {errcode} on {device}.",
        "I can't access online banking {channel}, it says session expired.",
    ],
}
LABELS = sorted(TEMPLATES)

# Labels a tired human or a weak model confuses: used for conflicting targets and wrong feedback answers.
CONFUSABLE = {
    "card_lost_or_stolen": "unrecognised_transaction",
    "card_not_arrived": "change_address",
    "card_declined": "account_locked",
    "pin_blocked": "card_declined",
    "refund_not_received": "dispute_merchant",
    "duplicate_charge": "dispute_merchant",
    "unrecognised_transaction": "dispute_merchant",
    "transfer_pending": "transfer_failed",
    "transfer_failed": "transfer_pending",
    "wrong_recipient": "transfer_failed",
    "exchange_rate_question": "fee_question",
    "top_up_failed": "card_declined",
    "account_locked": "app_login_problem",
    "change_address": "verify_identity",
    "verify_identity": "account_locked",
    "close_account": "fee_question",
    "fee_question": "exchange_rate_question",
    "cash_withdrawal_wrong_amount": "unrecognised_transaction",
    "direct_debit_cancel": "dispute_merchant",
    "loan_repayment": "fee_question",
    "dispute_merchant": "refund_not_received",
    "crypto_question": "fee_question",
    "savings_interest": "fee_question",
    "app_login_problem": "account_locked",
}

# Ambiguous tickets planted twice with different labels (conflicting targets).
CONFLICT_TICKETS = [
    (
        "I was charged twice by {merchant} for order {order} and they refuse to refund the second {amount}.",
        "duplicate_charge",
        "dispute_merchant",
    ),
    (
        "My transfer of {amount} to {country} sent {when} has not arrived and now the app shows an error.",
        "transfer_pending",
        "transfer_failed",
    ),
    (
        "{merchant} promised me {amount} back for order {order} but I still have nothing.",
        "refund_not_received",
        "dispute_merchant",
    ),
    (
        "Payment at {merchant} was refused and now I cannot log in to check my account.",
        "card_declined",
        "app_login_problem",
    ),
]

MERCHANTS = [
    "Tesco",
    "Amazon",
    "Uber",
    "Deliveroo",
    "Spotify",
    "Zara",
    "IKEA",
    "Shell",
    "Booking.com",
    "Ryanair",
    "Netflix",
    "Lidl",
    "Apple",
    "Starbucks",
    "eBay",
    "Etsy",
    "Airbnb",
    "Boots",
    "Argos",
    "Currys",
    "Decathlon",
    "Steam",
    "Zalando",
    "easyJet",
    "Vinted",
    "Aldi",
    "H&M",
    "Bolt",
    "Trainline",
    "PureGym",
    "Just Eat",
    "Sainsbury's",
]
CITIES = [
    "London",
    "Manchester",
    "Dublin",
    "Berlin",
    "Paris",
    "Madrid",
    "Lisbon",
    "Amsterdam",
    "Rome",
    "Warsaw",
    "Barcelona",
    "Prague",
    "Vienna",
    "Edinburgh",
    "Milan",
    "New York",
    "Tokyo",
    "Bristol",
]
COUNTRIES = [
    "Spain",
    "Portugal",
    "France",
    "Germany",
    "Italy",
    "the US",
    "Japan",
    "Poland",
    "Ireland",
    "Mexico",
    "Thailand",
    "Turkey",
    "Greece",
    "Switzerland",
    "Canada",
    "India",
]
CURRENCIES = ["EUR", "USD", "GBP", "CHF", "PLN", "SEK", "JPY", "TRY", "THB", "CZK", "MXN"]
COINS = ["Bitcoin", "BTC", "Ethereum", "ETH", "Solana", "Litecoin", "USDC"]
PRODUCTS = [
    "Fernbank Plus",
    "FernPay",
    "Fernbank Metal",
    "Fernbank Premium",
    "Fernbank Business",
    "Fernbank",
    "Fernbank Savings Pot",
]
CARDS = [
    "card",
    "debit card",
    "credit card",
    "virtual card",
    "physical card",
    "Fernbank Plus card",
    "Fernbank Metal card",
    "Fernbank card",
]
PAY_METHODS = ["Apple Pay", "Google Pay", "FernPay", "my debit card", "contactless", "PayPal"]
CHANNELS = ["in the app", "on the website", "through FernPay", "from my laptop", "on my phone", "via the web app"]
WHEN = [
    "yesterday",
    "today",
    "this morning",
    "last night",
    "last week",
    "on Monday",
    "on Friday",
    "two days ago",
    "over the weekend",
    "earlier today",
    "3 days ago",
    "last Tuesday",
]
MONTHS = ["January", "February", "March", "April", "May", "June"]
DEVICES = ["my iPhone", "an Android phone", "my Samsung", "a Pixel", "my iPad", "my laptop"]
DOCS = ["passport", "driving licence", "national ID card", "residence permit"]
CONTEXT = [
    "I'm travelling in {country} at the moment.",
    "I've been with Fernbank for {years} years.",
    "I'm using {device}.",
    "I already tried restarting the app.",
    "I contacted you {channel} {when} but got no answer.",
    "This is the second time this has happened.",
    "I need this fixed before my trip to {city}.",
    "I have {amount} in my account.",
    "I'm writing from {country}.",
    "My account is a {product} one.",
    "Nobody in the chat could help me.",
    "It's quite stressful honestly.",
    "Happened around {hour}.",
]
DAYS = ["3 days", "5 days", "a week", "10 days", "two weeks", "over a month", "4 working days", "9 days"]

GREETINGS = [
    "Hi,",
    "Hello,",
    "Hey team,",
    "Good morning,",
    "Dear Fernbank,",
    "hi there",
    "Hiya -",
    "Hello Fernbank support,",
    "Good evening,",
]
CLOSERS = [
    "Thanks.",
    "Thanks in advance!",
    "Please help.",
    "Cheers",
    "This is urgent.",
    "Appreciate it.",
    "Kind regards.",
    "thx",
    "Please sort this out quickly.",
    "Many thanks!",
]

# ------------------------------------------------------------------------------------------- PII fillers

FIRST = [
    "Maria",
    "James",
    "Aisha",
    "Liam",
    "Sofia",
    "Mateusz",
    "Chloe",
    "Raj",
    "Elena",
    "Tom",
    "Fatima",
    "Lukas",
    "Priya",
    "Oliver",
    "Ana",
    "Kwame",
    "Hannah",
    "Diego",
    "Yuki",
    "Sean",
    "Ingrid",
    "Omar",
    "Giulia",
    "Noah",
    "Zofia",
    "Pierre",
    "Amelia",
    "Mohammed",
    "Lena",
    "Carlos",
]
LAST = [
    "Garcia",
    "Smith",
    "Khan",
    "O'Brien",
    "Rossi",
    "Kowalski",
    "Dubois",
    "Patel",
    "Novak",
    "Brown",
    "Haddad",
    "Schneider",
    "Sharma",
    "Wilson",
    "Silva",
    "Mensah",
    "Fischer",
    "Lopez",
    "Tanaka",
    "Murphy",
    "Larsen",
    "Farouk",
    "Bianchi",
    "Taylor",
    "Nowak",
    "Martin",
    "Jones",
    "Ali",
    "Weber",
    "Fernandez",
]
MAIL_DOMAINS = ["gmail.com", "outlook.com", "yahoo.co.uk", "web.de", "proton.me", "hotmail.fr", "icloud.com"]
STREETS = [
    ("{n} Baker Street", "London NW1 6XE"),
    ("{n} Hauptstraße", "10115 Berlin"),
    ("{n} Rue de Rivoli", "75001 Paris"),
    ("{n} Calle Mayor", "28013 Madrid"),
    ("{n} Elm Avenue", "Springfield, IL 62704"),
    ("{n} Prinsengracht", "1015 DZ Amsterdam"),
    ("{n} Via Roma", "00184 Roma"),
    ("{n} Church Lane", "Bristol BS1 4DJ"),
    ("{n} Ulica Długa", "00-238 Warszawa"),
    ("{n} Grafton Street", "Dublin 2, D02 VF65"),
]


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    digits = prefix + "".join(str(rng.randrange(10)) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:  # these positions are doubled once the check digit is appended
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return digits + str((10 - total % 10) % 10)


def luhn_ok(number: str) -> bool:
    digits = [int(c) for c in number if c.isdigit()]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return len(digits) >= 13 and total % 10 == 0


def _iban(country: str, bban: str) -> str:
    """A checksummed IBAN (ISO 13616 mod-97) in groups of four."""
    rearranged = bban + country + "00"
    numeric = "".join(str(int(c, 36)) for c in rearranged)
    check = 98 - int(numeric) % 97
    raw = f"{country}{check:02d}{bban}"
    return " ".join(raw[i : i + 4] for i in range(0, len(raw), 4))


def iban_ok(iban: str) -> bool:
    raw = iban.replace(" ", "")
    numeric = "".join(str(int(c, 36)) for c in raw[4:] + raw[:4])
    return int(numeric) % 97 == 1


class Filler:
    """Fills ``{slot}`` templates from seeded lists and counts the PII it plants."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.pii: Counter[str] = Counter()

    def pick(self, seq):
        return seq[self.rng.randrange(len(seq))]

    # non-PII slots ------------------------------------------------------------------------------
    def amount(self) -> str:
        r = self.rng
        value = r.choice([r.randint(3, 99) + r.randint(0, 99) / 100, r.randint(10, 400), r.randint(100, 2500) + 0.5])
        fmt = r.randrange(6)
        if fmt == 0:
            return f"£{value:,.2f}"
        if fmt == 1:
            return f"€{value:.2f}".replace(".", ",") if r.random() < 0.5 else f"€{value:.2f}"
        if fmt == 2:
            return f"${value:,.2f}"
        if fmt == 3:
            return f"{value:.2f} {self.pick(CURRENCIES)}"
        if fmt == 4:
            return f"{self.pick(['GBP', 'EUR', 'USD', 'CHF'])} {int(value)}"
        return f"{int(value)} euros" if r.random() < 0.5 else f"{int(value)} quid"

    def date(self) -> str:
        d = TRAIN_START + timedelta(days=self.rng.randrange(170))
        fmt = self.rng.randrange(4)
        if fmt == 0:
            return d.strftime("%d/%m/%Y")
        if fmt == 1:
            return d.strftime("%Y-%m-%d")
        if fmt == 2:
            return f"{d.day} {d.strftime('%B')}"
        return f"the {d.day}{'th' if 10 <= d.day <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(d.day % 10, 'th')}"

    def order(self) -> str:
        r = self.rng
        fmt = r.randrange(4)
        if fmt == 0:
            return f"ORD-{r.randint(10000, 99999)}"
        if fmt == 1:
            return f"#{r.randint(100000, 999999)}"
        if fmt == 2:
            return f"TRX-{r.randint(1000, 9999)}-{chr(65 + r.randrange(26))}{chr(65 + r.randrange(26))}"
        return "ref " + "".join(r.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(8))

    def slot(self, name: str) -> str:
        simple = {
            "merchant": MERCHANTS,
            "city": CITIES,
            "country": COUNTRIES,
            "currency": CURRENCIES,
            "currency2": CURRENCIES,
            "coin": COINS,
            "product": PRODUCTS,
            "card": CARDS,
            "pay_method": PAY_METHODS,
            "channel": CHANNELS,
            "when": WHEN,
            "month": MONTHS,
            "days": DAYS,
            "city2": CITIES,
            "device": DEVICES,
            "doc": DOCS,
        }
        if name == "years":
            return str(self.rng.randint(2, 9))
        if name == "rate":
            return self.pick(["2.5", "3.1", "3.75", "4", "1.9"])
        if name == "errcode":
            return f"E{self.rng.randint(100, 999)}"
        if name == "hour":
            return f"{self.rng.randint(7, 22)}:{self.rng.randrange(60):02d}"
        if name in simple:
            return self.pick(simple[name])
        return getattr(self, name)()

    def fill(self, template: str) -> str:
        return re.sub(r"\{(\w+)\}", lambda m: self.slot(m.group(1)), template)

    # PII ------------------------------------------------------------------------------------------
    def name(self) -> str:
        self.pii["PERSON"] += 1
        return f"{self.pick(FIRST)} {self.pick(LAST)}"

    def email(self) -> str:
        self.pii["EMAIL_ADDRESS"] += 1
        first, last = self.pick(FIRST).lower(), self.pick(LAST).lower().replace("'", "")
        user = self.pick(
            [f"{first}.{last}", f"{first}{self.rng.randint(1, 99)}", f"{first[0]}{last}", f"{last}.{first}"]
        )
        return f"{user}@{self.pick(MAIL_DOMAINS)}"

    def phone(self) -> str:
        self.pii["PHONE_NUMBER"] += 1
        r = self.rng
        n = lambda k: "".join(str(r.randrange(10)) for _ in range(k))  # noqa: E731
        return self.pick(
            [
                f"+44 7700 {n(6)}",
                f"07700 {n(6)}",
                f"+1 (555) {n(3)}-{n(4)}",
                f"(415) 555-{n(4)}",
                f"+49 30 {n(8)}",
                f"+33 6 {n(2)} {n(2)} {n(2)} {n(2)}",
                f"+34 6{n(2)} {n(3)} {n(3)}",
                f"+91 98{n(3)} {n(5)}",
                f"+48 5{n(2)} {n(3)} {n(3)}",
                f"+353 87 {n(3)} {n(4)}",
            ]
        )

    def card_number(self) -> str:
        self.pii["CREDIT_CARD"] += 1
        r = self.rng
        kind = r.randrange(3)
        if kind == 0:
            num = _luhn_complete("4", 16, r)
        elif kind == 1:
            num = _luhn_complete(r.choice(["51", "52", "53", "54", "55"]), 16, r)
        else:
            num = _luhn_complete(r.choice(["34", "37"]), 15, r)
            return f"{num[:4]} {num[4:10]} {num[10:]}"
        sep = r.choice([" ", "-", ""])
        return sep.join(num[i : i + 4] for i in range(0, 16, 4))

    def iban(self) -> str:
        self.pii["IBAN_CODE"] += 1
        r = self.rng
        d = lambda k: "".join(str(r.randrange(10)) for _ in range(k))  # noqa: E731
        return self.pick(
            [
                _iban("GB", r.choice(["NWBK", "BARC", "MIDL", "LOYD"]) + d(14)),
                _iban("DE", d(18)),
                _iban("NL", r.choice(["ABNA", "INGB", "RABO"]) + d(10)),
                _iban("ES", d(20)),
                _iban("FR", d(23)),
            ]
        )

    def address(self) -> str:
        self.pii["LOCATION"] += 1
        street, town = self.pick(STREETS)
        return f"{street.format(n=self.rng.randint(1, 240))}, {town}"

    def dob(self) -> str:
        self.pii["DATE_OF_BIRTH"] += 1
        d = datetime(1950, 1, 1) + timedelta(days=self.rng.randrange(365 * 55))
        return self.pick([d.strftime("%d/%m/%Y"), d.strftime("%Y-%m-%d"), f"{d.day} {d.strftime('%B %Y')}"])


PII_SNIPPETS = [
    "My name is {name}.",
    "This is {name} writing.",
    "{name} here.",
    "You can email me at {email}.",
    "Reply to {email} please.",
    "Call me on {phone}.",
    "My number is {phone}.",
    "The card number is {card_number}.",
    "Account holder: {name}, {email}.",
    "I live at {address}.",
    "My IBAN is {iban}.",
    "DOB {dob} if you need to check it's me.",
    "Contact: {name}, tel {phone}.",
]
PII_BY_LABEL = {
    "card_lost_or_stolen": ["The card number was {card_number}.", "Card {card_number}, holder {name}."],
    "change_address": ["My new address is {address}.", "Old address {address}, please update it."],
    "verify_identity": ["My date of birth is {dob}.", "Full name {name}, born {dob}."],
    "wrong_recipient": ["I sent it to {iban} instead of my own account.", "The wrong IBAN was {iban}."],
    "transfer_failed": ["The recipient IBAN is {iban}."],
    "close_account": ["Send the balance to {iban}."],
    "app_login_problem": ["My login email is {email}.", "The code should go to {phone}."],
    "unrecognised_transaction": ["My card is {card_number}."],
}
RUDE = [
    "This is the most useless bloody bank I've ever used.",
    "Sort it out you clowns.",
    "Absolute rubbish service, idiots.",
]

# ------------------------------------------------------------------------------------------- helpers


def _shingles(text: str, k: int = 5) -> set[str]:
    t = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return {t[i : i + k] for i in range(max(1, len(t) - k + 1))}


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def norm(text: str) -> str:
    """NFKC + casefold + collapsed whitespace: the form loraflow's exact dedup hashes."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _iso(rng: random.Random, start: datetime, end: datetime) -> str:
    span = int((end - start).total_seconds())
    return (start + timedelta(seconds=rng.randrange(span))).strftime("%Y-%m-%dT%H:%M:%SZ")


class Generator:
    def __init__(self, seed: int = SEED):
        self.rng = random.Random(seed)
        self.f = Filler(self.rng)
        self.shingles_by_label: dict[str, list[set[str]]] = {label: [] for label in LABELS}
        self.seen_norm: set[str] = set()

    def ticket(self, label: str, with_pii: bool, check: bool = True) -> str:
        """One ticket text for ``label``; with ``check`` it differs clearly from earlier ones of that label."""
        r, f = self.rng, self.f
        for _ in range(50):
            before = f.pii.copy()
            parts = []
            if r.random() < 0.4:
                parts.append(f.pick(GREETINGS))
            body = f.fill(f.pick(TEMPLATES[label]))
            pii_part = None
            if with_pii:
                pool = PII_BY_LABEL.get(label, []) + PII_SNIPPETS
                pii_part = f.fill(f.pick(pool))
            if pii_part and r.random() < 0.45:
                parts += [pii_part, body]
            else:
                parts.append(body)
                if pii_part:
                    parts.append(pii_part)
            if r.random() < 0.45:
                parts.append(f.fill(f.pick(CONTEXT)))
            if r.random() < 0.35:
                parts.append(f.pick(CLOSERS))
            text = " ".join(parts)
            if r.random() < 0.08:
                text = text.lower()
            if not check:
                return text
            sh = _shingles(text)
            if norm(text) not in self.seen_norm and all(
                _jaccard(sh, other) < ACCIDENTAL_DUP_JACCARD for other in self.shingles_by_label[label]
            ):
                self.shingles_by_label[label].append(sh)
                self.seen_norm.add(norm(text))
                return text
            f.pii = before  # the redrawn ticket's PII is not planted
        raise RuntimeError(f"could not draw a distinct ticket for {label}")

    def case_ws_variant(self, text: str) -> str:
        """Same text after NFKC + casefold + whitespace collapsing, different bytes."""
        r = self.rng
        kind = r.randrange(4)
        if kind == 0:
            out = text.lower()
        elif kind == 1:
            out = "  " + text.replace(" ", "  ", 2) + " "
        elif kind == 2:
            out = text.upper()
        else:
            out = text[:1].swapcase() + text[1:] + "\t"
        return out if out != text else text + " "

    def near_variant(self, text: str, label: str) -> str:
        """One or two small edits (a re-sent ticket): new after normalisation, still >= NEAR_DUP_MIN_JACCARD."""
        source = _shingles(text)
        for _ in range(20):
            out = self._edit(text)
            if norm(out) not in self.seen_norm and _jaccard(_shingles(out), source) >= NEAR_DUP_MIN_JACCARD:
                self.seen_norm.add(norm(out))
                return out
        raise RuntimeError(f"could not draw a near duplicate for a {label} ticket")

    def _edit(self, text: str) -> str:
        r = self.rng
        edits = ["prefix", "suffix", "typo", "punct", "drop_word"]
        chosen = [edits[r.randrange(len(edits))]]
        if r.random() < 0.3:
            chosen.append(edits[r.randrange(len(edits))])
        out = text
        for e in chosen:
            if e == "prefix":
                out = r.choice(["hi, ", "Hi - ", "hello, ", "Hey, ", "Sorry to bother you, "]) + out
            elif e == "suffix":
                out = out + r.choice([" thanks", " Thanks!", " thank you", " pls help", " ty"])
            elif e == "typo":
                words = out.split(" ")
                idx = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
                if idx:
                    i = idx[r.randrange(len(idx))]
                    w = words[i]
                    j = r.randrange(1, len(w) - 2)
                    words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
                    out = " ".join(words)
                else:
                    out = out + "!"
            elif e == "punct":
                out = out.rstrip(".!?") + r.choice(["!!", "?", "...", ""]) if out[-1:] in ".!?" else out + "."
            else:
                words = out.split(" ")
                idx = [i for i, w in enumerate(words) if w.lower() in {"the", "my", "a", "please", "and", "still"}]
                if idx:
                    del words[idx[r.randrange(len(idx))]]
                    out = " ".join(words)
                else:
                    out = out + " ?"
        if norm(out) == norm(text):
            out = "hi, " + out
        return out


# ------------------------------------------------------------------------------------------- building


def build(seed: int = SEED) -> dict:
    """Build every output in memory: {relative path: bytes} plus the manifest dict."""
    g = Generator(seed)
    r = g.rng
    rows: dict[str, list[dict]] = {k: [] for k in N_ROWS}  # clean rows: {"text", "label", "kind"}
    counts: Counter[str] = Counter()
    pii_rows = 0

    def clean_row(label: str) -> dict:
        nonlocal pii_rows
        has_pii = r.random() < PII_SHARE
        pii_rows += has_pii
        return {"text": g.ticket(label, has_pii), "label": label, "kind": "unique", "pii": has_pii}

    # Conflicting targets: the first reading goes into chat as an ordinary row, the second into alpaca / csv.
    conflict_rows = []
    for template, label_a, label_b in CONFLICT_TICKETS:
        text = g.f.fill(template)
        conflict_rows.append(
            (
                {"text": text, "label": label_a, "kind": "conflict_original", "pii": False},
                {"text": text, "label": label_b, "kind": "conflict", "pii": False},
            )
        )
    conflict_targets = {"alpaca": [c[1] for c in conflict_rows[:2]], "csv": [c[1] for c in conflict_rows[2:]]}

    special = {"chat": 3 + 5, "alpaca": 1 + 1, "csv": 1}  # malformed + contract violations, built below
    for fmt in ("chat", "alpaca", "csv"):
        plan = PLAN[fmt]
        n_unique = N_ROWS[fmt] - plan["exact"] - plan["near"] - plan["conflicts"] - special[fmt]
        out = rows[fmt]
        if fmt == "chat":
            out += [c[0] for c in conflict_rows]
        while len(out) < n_unique:
            out.append(clean_row(LABELS[len(out) % len(LABELS)] if len(out) < 24 * 20 else r.choice(LABELS)))
        r.shuffle(out)
        # Duplicates draw only from unique rows (never from another duplicate) of the files named in the plan.
        for kind, n, sources in (
            ("exact", plan["exact"], plan["exact_from"]),
            ("near", plan["near"], plan["near_from"]),
        ):
            for i in range(n):
                src_fmt = sources[i % len(sources)]
                pool = [row for row in rows[src_fmt] if row["kind"] == "unique"]
                src = pool[r.randrange(len(pool))]
                if kind == "exact":
                    case_ws = i % 2 == 1
                    text = g.case_ws_variant(src["text"]) if case_ws else src["text"]
                    counts["exact_duplicates_case_or_whitespace" if case_ws else "exact_duplicates_identical"] += 1
                    counts["exact_duplicates_cross_file" if src_fmt != fmt else "exact_duplicates_same_file"] += 1
                else:
                    text = g.near_variant(src["text"], src["label"])
                    counts["near_duplicates_cross_file" if src_fmt != fmt else "near_duplicates_same_file"] += 1
                out.append({"text": text, "label": src["label"], "kind": kind, "pii": src["pii"]})
                pii_rows += src["pii"]
        out += conflict_targets.get(fmt, [])
    pii_entities_clean = dict(sorted(g.f.pii.items()))

    # ---- the records, format by format ------------------------------------------------------------
    def created() -> str:
        return _iso(r, TRAIN_START, TRAIN_END)

    def chat_line(text: str, label, *, ts: str | None = None) -> bytes:
        rec = {
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": text},
                {"role": "assistant", "content": label},
            ],
            "created_at": ts or created(),
        }
        return json.dumps(rec, ensure_ascii=False).encode("utf-8")

    def alpaca_line(text: str, label) -> bytes:
        return json.dumps({"instruction": SYSTEM_PROMPT, "input": text, "output": label}, ensure_ascii=False).encode()

    files: dict[str, bytes] = {}
    malformed: Counter[str] = Counter()
    violations: Counter[str] = Counter()
    extra_pii = 0  # PII planted outside the clean rows (malformed lines, assistant-free records)

    # chat: clean rows + 3 malformed lines + 5 contract violations, at seeded positions
    chat_lines = [chat_line(row["text"], row["label"]) for row in rows["chat"]]
    specials: list[bytes] = []
    t = g.ticket("refund_not_received", True, check=True)
    extra_pii += 1
    full = chat_line(t, "refund_not_received")
    specials.append(full[: len(full) * 2 // 3])
    malformed["truncated_json"] += 1
    t = g.ticket("card_declined", False, check=True)
    specials.append(
        json.dumps(
            [{"role": "user", "content": t}, {"role": "assistant", "content": "card_declined"}], ensure_ascii=False
        ).encode()
    )
    malformed["not_an_object"] += 1
    latin = "Café in München charged me twice for the same croissant, 4,50 EUR each time. Zürich branch?"
    specials.append(
        json.dumps(
            {
                "messages": [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": latin},
                    {"role": "assistant", "content": "duplicate_charge"},
                ],
                "created_at": created(),
            },
            ensure_ascii=False,
        ).encode("latin-1")
    )
    malformed["invalid_utf8"] += 1
    t = g.ticket("fee_question", True, check=True)
    extra_pii += 1
    specials.append(chat_line(t, ""))
    violations["empty_assistant"] += 1
    specials.append(chat_line(g.ticket("card_declined", False, check=True), "card_issue"))
    violations["label_not_in_set"] += 1
    t = g.ticket("account_locked", True, check=True)
    extra_pii += 1
    specials.append(
        json.dumps(
            {
                "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": t}],
                "created_at": created(),
            },
            ensure_ascii=False,
        ).encode()
    )
    violations["ends_with_user_turn"] += 1
    long_parts = [g.f.fill(tpl) for _ in range(8) for tpl in TEMPLATES["dispute_merchant"]]
    long_text = "I need to explain the whole story. " + " ".join(long_parts)
    specials.append(chat_line(long_text, "dispute_merchant"))
    violations["overlong_ticket"] += 1
    rec = json.loads(chat_line(g.ticket("pin_blocked", False, check=True), "pin_blocked"))
    rec["messages"][2]["content"] = LABELS.index("pin_blocked")  # a label index where the label belongs
    specials.append(json.dumps(rec, ensure_ascii=False).encode())
    violations["non_string_content"] += 1
    for line in specials:
        chat_lines.insert(r.randrange(len(chat_lines) + 1), line)
    files["demo/tickets_chat.jsonl"] = b"\n".join(chat_lines) + b"\n"

    # alpaca: clean rows + 1 truncated line + 1 label outside the set
    alpaca_lines = [alpaca_line(row["text"], row["label"]) for row in rows["alpaca"]]
    t = g.ticket("wrong_recipient", True, check=True)
    extra_pii += 1
    full = alpaca_line(t, "wrong_recipient")
    alpaca_lines.insert(r.randrange(len(alpaca_lines) + 1), full[: len(full) // 2])
    malformed["truncated_json"] += 1
    alpaca_lines.insert(
        r.randrange(len(alpaca_lines) + 1), alpaca_line(g.ticket("refund_not_received", False, check=True), "refund")
    )
    violations["label_not_in_set"] += 1
    files["demo/tickets_alpaca.jsonl"] = b"\n".join(alpaca_lines) + b"\n"

    # csv: clean rows + 1 empty queue
    csv_rows = [(row["text"], row["label"], created()) for row in rows["csv"]]
    csv_rows.insert(r.randrange(len(csv_rows) + 1), (g.ticket("top_up_failed", False, check=True), "", created()))
    violations["empty_assistant"] += 1
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    w.writerows(csv_rows)
    files["demo/tickets.csv"] = buf.getvalue().encode("utf-8")

    files["demo/labels.json"] = (json.dumps(LABELS, indent=1) + "\n").encode()
    files["demo/system_prompt.txt"] = (SYSTEM_PROMPT + "\n").encode()

    # ---- feedback seed -----------------------------------------------------------------------------
    feedback, fb_counts = build_feedback(g)
    files["demo/feedback_seed.jsonl"] = b"".join(json.dumps(x, ensure_ascii=False).encode() + b"\n" for x in feedback)

    # ---- bad inputs for the ingest error paths ----------------------------------------------------
    good = [chat_line(g.ticket(LABELS[i * 5], False, check=True), LABELS[i * 5]) for i in range(4)]
    files["bad/truncated.jsonl"] = b"\n".join(good[:2] + [good[2][:40]] + good[3:]) + b"\n"
    files["bad/empty.jsonl"] = b""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["ticket_txt", "queue", "opened_at"])
    for i in range(5):
        w.writerow([g.ticket(LABELS[i * 3], False, check=True), LABELS[i * 3], created()])
    files["bad/wrong_column.csv"] = buf.getvalue().encode()

    all_clean = rows["chat"] + rows["alpaca"] + rows["csv"]
    per_file = {
        "tickets_chat.jsonl": {
            "rows": len(chat_lines),
            "malformed": 3,
            "contract_violations": 5,
            "exact_duplicates": PLAN["chat"]["exact"],
            "near_duplicates": PLAN["chat"]["near"],
            "conflicting_targets": 0,
        },
        "tickets_alpaca.jsonl": {
            "rows": len(alpaca_lines),
            "malformed": 1,
            "contract_violations": 1,
            "exact_duplicates": PLAN["alpaca"]["exact"],
            "near_duplicates": PLAN["alpaca"]["near"],
            "conflicting_targets": 2,
        },
        "tickets.csv": {
            "rows": len(csv_rows),
            "malformed": 0,
            "contract_violations": 1,
            "exact_duplicates": PLAN["csv"]["exact"],
            "near_duplicates": PLAN["csv"]["near"],
            "conflicting_targets": 2,
        },
    }
    manifest = {
        "seed": seed,
        "labels": len(LABELS),
        "csv_columns": CSV_COLUMNS,
        "files": per_file,
        "totals": {
            "rows": sum(v["rows"] for v in per_file.values()),
            "clean_rows": len(all_clean),
            "unique_rows": sum(1 for x in all_clean if x["kind"] in ("unique", "conflict_original")),
            "exact_duplicates": sum(v["exact_duplicates"] for v in per_file.values()),
            "near_duplicates": sum(v["near_duplicates"] for v in per_file.values()),
            "conflicting_targets": len(CONFLICT_TICKETS),
            "malformed_lines": sum(malformed.values()),
            "contract_violations": sum(violations.values()),
        },
        "duplicates": dict(sorted(counts.items())),
        "malformed": dict(sorted(malformed.items())),
        "contract_violations": dict(sorted(violations.items())),
        "pii": {
            "clean_rows_with_pii": pii_rows,
            "entities_in_unique_rows": pii_entities_clean,
            "rows_with_pii_outside_clean_rows": extra_pii,
        },
        "keep": {
            "clean_rows_with_brand": sum(1 for x in all_clean if BRAND.lower() in x["text"].lower()),
            "clean_rows_with_order_id": sum(
                1 for x in all_clean if re.search(r"ORD-\d{5}|TRX-\d{4}|#\d{6}|ref [A-Z0-9]{8}", x["text"])
            ),
        },
        "clean_rows_per_label": dict(sorted(Counter(x["label"] for x in all_clean).items())),
        "feedback_seed": fb_counts,
    }
    files["demo/MANIFEST.json"] = (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode()
    return {"files": files, "manifest": manifest}


HALLUCINATED = ["card_declined_abroad", "refund_pending", "transfer_issue", "charged_two_times"]


def build_feedback(g: Generator) -> tuple[list[dict], dict]:
    """~4 months of production feedback for model version 3: what the feedback store will be fed."""
    r, f = g.rng, g.f
    stamps = sorted(_iso(r, FEEDBACK_START, FEEDBACK_END) for _ in range(N_FEEDBACK))
    out, c = [], Counter()
    for ts in stamps:
        label = r.choice(LABELS)
        roll = r.random()
        kind = (
            "good"
            if roll < 0.60
            else "meh"
            if roll < 0.65
            else "corrected"
            if roll < 0.83
            else "hallucinated"
            if roll < 0.85
            else "bad_uncorrected"
            if roll < 0.91
            else "pii"
            if roll < 0.97
            else "offensive"
        )
        has_pii = kind == "pii" or r.random() < 0.15
        text = g.ticket(label, has_pii, check=False)  # production traffic may repeat training tickets
        if kind == "offensive":
            text = f"{text} {f.pick(RUDE)}"
        row = {
            "request_messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}],
            "model_version": "3",
            "response": label,
            "rating": None,
            "corrected_response": None,
            "flag_reason": None,
            "created_at": ts,
        }
        if kind == "good":
            row["rating"] = r.choice([4, 5, 5, "up", "up"])
        elif kind == "meh":
            row["rating"] = 3
        elif kind in ("corrected", "hallucinated"):
            row["response"] = CONFUSABLE[label] if kind == "corrected" else r.choice(HALLUCINATED)
            row["rating"] = r.choice([1, 2, "down"])
            row["corrected_response"] = label
            row["flag_reason"] = "wrong_category" if r.random() < 0.5 else None
        elif kind == "bad_uncorrected":
            row["response"] = CONFUSABLE[label]
            row["rating"] = r.choice([1, 2, 3, "down"])
        elif kind == "pii":
            row["rating"] = r.choice([3, 4, "up", "down"])
            row["flag_reason"] = "pii"
        else:
            row["rating"] = r.choice([1, "down"])
            row["flag_reason"] = "offensive"
        c[kind] += 1
        c["with_pii"] += has_pii
        out.append(row)
    counts = {
        "rows": len(out),
        "by_month": dict(sorted(Counter(x["created_at"][:7] for x in out).items())),
        "kinds": dict(sorted((k, v) for k, v in c.items() if k != "with_pii")),
        "corrected": sum(1 for x in out if x["corrected_response"] is not None),
        "flagged": dict(sorted(Counter(x["flag_reason"] for x in out if x["flag_reason"]).items())),
        "rating_thumbs": sum(1 for x in out if isinstance(x["rating"], str)),
        "with_pii": c["with_pii"],
    }
    return out, counts


def write(out_root: Path, seed: int = SEED) -> dict:
    built = build(seed)
    for rel, data in built["files"].items():
        path = out_root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return built["manifest"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="folder that receives demo/ and bad/ (default: this examples/ folder)",
    )
    parser.add_argument("--seed", type=int, default=SEED, help="random seed (the committed files use the default)")
    args = parser.parse_args()
    manifest = write(args.out, args.seed)
    print(
        json.dumps({k: manifest[k] for k in ("files", "totals", "malformed", "contract_violations", "pii")}, indent=1)
    )


if __name__ == "__main__":
    main()
