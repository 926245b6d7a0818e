"""Regular expressions of the PII recognizers and span rules, and the one IBAN checksum.

Kept apart from the recognizers so they can be read (and reused: :func:`iban_ok` is the project's IBAN check)
without importing Presidio.
"""

import re

_STREET_SUFFIX = (
    r"Street|St\.?|Avenue|Ave\.?|Road|Rd\.?|Boulevard|Blvd\.?|Lane|Ln\.?|Drive|Dr\.?|Court|Ct\.?|Place|Pl\.?|"
    r"Square|Sq\.?|Terrace|Way|Parkway|Pkwy|Highway|Hwy|Circle|Cir\.?|Trail|Route|Harbor|Harbour|Union|"
    r"Prairie|Forks?|Crossing|Heights|Hills?|Ridge|Row|Walk|Alley|Close|Crescent|Gardens?|Grove|Mews|Plaza|"
    r"Port|Point|Valley|Village|Wells?|Mission|Mount|Passage|Path|Pike|Plains?|Shores?|Springs?|Stream|"
    r"Summit|Turnpike|Unions|Vista|Estates?|Extension|Falls?|Ferry|Fields?|Flats?|Ford|Forest|Fort|Freeway|"
    r"Gateway|Glen|Green|Haven|Islands?|Isle|Junction|Knoll|Lakes?|Landing|Lodge|Loop|Mall|Manor|"
    r"Meadows?|Mills?|Motorway|Orchard|Oval|Pass|Pines?|Ranch|Rapids?|River|Skyway|Trace|Tunnel|Viaduct|"
    r"Views?|Bypass|Camp|Canyon|Cape|Causeway|Center|Centre|Cliffs?|Common|Corners?|Courts|Cove|Creek|"
    r"Crest|Curve|Dale|Divide|Expressway|Burg|Bluffs?|Branch|Bridge|Brooks?|Hollow|Inlet|Arcade|Beach|Bend|"
    r"Station|Ports|Ways|Locks?|Lights?|Keys?|Shoals?|Squares|Throughway|Underpass|Radial|Overpass|Spur"
)
# Street names written as one word in Nordic, German, Dutch, Finnish, Hungarian, Polish... address books.
_COMPOUND_STREET = (
    r"[^\W\d_][\w'-]*(?:vej|veien|vegen|veg|vei|gade|gata|gatan|gasse|gaße|weg|straße|strasse|str\.|katu|tie|"
    r"vägen|väg|gränd|stigen|laan|straat|plein|utca|ulica|allee|platz|ring|torget|torg|kuja|polku|"
    r"brekka|stræti|stígur|gata|vegur|haugen|bakken|moor|garden|skálinn|tún)"
)
_ROMANCE_STREET = (
    r"(?:R\.?|Rúa|Rue|Rua|Calle|Carrer|Via|Viale|Avenida|Av\.|Avenue|Chemin|Boulevard|Plac|Praça|Largo|Paseo|"
    r"Travessa|Ulica|ul\.|Strada|Place|Allée|Impasse|Quai|Piazza|Corso)"
)
_WORD = r"[^\W\d_][\w'.-]*"
_NUM = r"\d{1,6}[A-Za-z]?"
_UNIT = r"(?:Apt\.?|Apartment|Suite|Ste\.?|Unit|Flat|Floor|Fl\.?|Room|Rm\.?)\s?#?\d{1,5}[A-Za-z]?"

ADDRESS_PATTERNS: list[tuple[str, float]] = [
    # 22829 Jagerij 64 / 1593 Pagari 18: house number, one street word, number (the Faker / European order)
    (r"\b\d{1,6}\s+[A-ZÀ-Þ][a-zà-ÿ][\w'-]*\s+\d{1,4}[A-Za-z]?\b(?!\s*(?:%|percent|years|days|times))", 0.5),
    # 3784 Archwood Avenue [Apt. 2]   /   615 Benedum Drive
    (rf"\b{_NUM}(?:\s+{_NUM})?\s+(?:{_WORD}\s+){{0,4}}(?:{_STREET_SUFFIX})\b(?:,?\s+{_UNIT})*", 0.6),
    # Mellemvej 32, Koskikatu 25 Apt. 864, 6750 Koskikatu 25
    (rf"\b(?:{_NUM}\s+)?{_COMPOUND_STREET}\s+{_NUM}\b(?:,?\s+{_UNIT})*", 0.6),
    (rf"(?i:\b{_NUM}\s+{_COMPOUND_STREET}\b)", 0.5),
    # Rue de Piétrain 371, 159 Eleftheriou Venizelou str
    (
        rf"(?i)\b(?:{_NUM}\s+)?{_ROMANCE_STREET}\s+(?:(?:de|da|do|del|della|di|des|du|la|le|dos|das)\s+)?"
        rf"(?:{_WORD}\s+){{0,3}}{_WORD}(?:\s+{_NUM})?\b",
        0.5,
    ),
    (rf"\b{_NUM}\s+(?:{_WORD}\s+){{1,3}}(?i:str\.?|st\.)(?=\W|$)", 0.5),
    # Gregersen Prairie / Rennie Union / Trajanka Forks: Capitalised name + street suffix (Faker-style)
    (rf"\b[A-Z][\w'-]+\s+(?:{_STREET_SUFFIX})\b(?:,?\s+{_UNIT})*", 0.35),
    # unit numbers on their own: Apt. 675, Suite 894
    (rf"\b{_UNIT}\b", 0.5),
    # PSC 0729, Box 5797 / APO AP 96854 / USNS Smith FPO AE 12345 / Unit 1234 Box 567
    (r"(?i)\bPSC\s+\d{3,5},?\s+Box\s+\d{3,5}(?:\s+APO\s+A[AEP]\s+\d{5})?", 0.7),
    (r"(?i)\b(?:USNS|USNV|USS|USCGC)\s+[^\W\d_]+(?:\s+[^\W\d_]+)?\s+FPO\s+A[AEP]\s+\d{5}", 0.7),
    (r"(?i)\b[AF]PO\s+A[AEP]\s+\d{5}", 0.7),
    (r"(?i)\bUnit\s+\d{3,5}\s+Box\s+\d{3,5}", 0.6),
    (r"(?i)\bP\.?\s?O\.?\s+Box\s+\d{1,6}", 0.6),
    # the corner of 3744 Retreat Avenue and Władysława Route
    (r"(?i:the\s+corner\s+of)\s+[^,.?!\n]{3,60}?\s+and\s+(?:[^\W_][\w'.-]*\s?){1,4}", 0.6),
]

# The rest of a sentence after "my address is" / "lives at" / "send it to" is an address.
ADDRESS_TAIL = re.compile(
    r"(?i:\b(?:address(?:\s+is|\s+to|\s+as)?(?:\s+now)?\s*[:-]?|(?:lives?|living|reside[sd]?|located|staying)\s+at|"
    r"(?:moved|relocated|sent|send|ship|shipped|deliver|delivered|mail|mailed|post|posted)\s+(?:it\s+|them\s+)?to"
    r"|drops?\s+you\s+off\s+at|address\s+change\s+to))\s+"
    r"((?:the\s+corner\s+of\s+)?\d[^?!;]{3,150}?)(?=\s*(?:[?!;]|\.\s+[A-Z]|\.?\s*$|\n\n))"
)
ZIP = re.compile(
    r"(?<![$€£¥.,\d])\b(?:\d{5}(?:-\d{4})?|\d{3}\s\d{2}|\d{4}|[A-Z]\d[A-Z]\s?\d[A-Z]\d|[A-Z]{1,2}\d[A-Z\d]?\s?\d[A-Z]{2})\b(?![.,]\d)"
)
ZIP_CONTEXT = re.compile(
    r"(?i)\b(?:zip|postal|post|postcode|zipcode)(?:\s*code)?(?:\s+is)?\s*[:#-]?\s*"
    r"(\d{3,5}(?:[\s-]\d{2,4})?|[A-Z]\d[A-Z]\s?\d[A-Z]\d|[A-Z]{1,2}\d[A-Z\d]?\s?\d[A-Z]{2})\b"
)
# A 12-19 digit run right after "card" is a card number even when its checksum fails (typos, test data).
CARD_CONTEXT = re.compile(r"(?i)\bcard\b[^\d\n]{0,25}?(\d(?:[ -]?\d){11,18})\b")
# Words a greeting / "I'm" pattern must not take for a name.
_NOT_NAME = (
    r"(?!(?:My|I|We|You|The|There|This|That|Team|Can|Could|Would|Please|Did|Do|Does|Is|Are|Was|Why|How|What|"
    r"When|Where|Who|Just|Not|So|Sorry|Trying|Having|Going|Getting|Writing|Looking|Still|Also|Again|Here|Thanks|"
    r"Thank|Hi|Hello|Hey|Good|Dear|Support|Sir|Madam|All|Everyone|Ok|Okay|Yes|No|New|Unable|Glad|Happy|Sure|"
    r"Back|Calling|Contacting|Reaching|About|From|In|On|At|To|For|With|Urgent|Quick|Another|Again)\b)"
)
NAME_CONTEXT = [
    (
        re.compile(
            r"\b(?:I'm|I am|This is|Hi|Hello|Dear|Thanks|Regards|Sincerely|Cheers|Best|Contact|Name|From|Signed|"
            r"Customer|Account holder|Cardholder|(?i:call\s+me|it'?s\s+under|"
            r"change\s+it\s+to))[,:]?\s+"
            + _NOT_NAME
            + r"([A-ZÀ-Þ][a-zà-ÿ'-]+(?:\s+[A-ZÀ-Þ]\.?(?=\s))?(?:\s+[A-ZÀ-Þ][\w'-]+){0,2})"
        ),
        0.4,
    ),
]
NAME_CONTEXT.append(
    (re.compile(r"\b([A-ZÀ-Þ][a-zà-ÿ'-]+(?:\s+[A-ZÀ-Þ][\w'-]+){1,2})\s+(?:here|writing|speaking)\b"), 0.4)
)
# Strong cues ("Contact:", "Account holder:", "this is ... writing") take a name in any case: people write in
# lower case and in capitals, where the NER finds nothing.
_STOP_WORD = (
    r"(?:the|a|an|my|your|our|to|and|or|is|are|was|not|no|yes|writing|here|speaking|calling|about|regarding|"
    r"please|thanks|thank|you|me|i|we|it|this|that|from|for|with|on|at|in|of|tel|phone|email|e-mail|mobile|"
    r"account|card|number|urgent|again|still|just|so|very|really|sorry|ok|okay|hi|hello|dear|team|support|"
    r"him|her|them|his|their|us|after|as|by|but|if|when|who)"
)
_NAME_WORD = rf"(?!{_STOP_WORD}\b)(?:[^\W\d_][\w'-]+|[^\W\d_]\.?(?!\w))"
_ANY_NAME = rf"{_NAME_WORD}(?:\s+{_NAME_WORD}){{0,3}}"
NAME_CONTEXT.append(
    (
        re.compile(
            rf"(?i)\b(?:contact|name|full\s+name|account\s+holder|card\s*holder|signed|customer)\s*[:-]\s*({_ANY_NAME})"
        ),
        0.5,
    )
)
NAME_CONTEXT.append(
    (
        re.compile(
            r"(?i)\b(?:my\s+name\s+is|name\s+is|named(?:\s+(?:him|her|them|it))?)\s+(?!(?:spelled|spelt|incorrect|wrong|correct|missing|still|"
            rf"also|now|being|listed|shown|displayed|changed|different)\b)({_ANY_NAME})"
        ),
        0.5,
    )
)
NAME_CONTEXT.append(
    (
        re.compile(rf"(?i)\b(?:this\s+is|it'?s|i\s+am|i'm)\s+({_ANY_NAME})\s+(?:writing|here|speaking|calling)\b"),
        0.5,
    )
)
# IBANs written in lower case or with odd spacing ("gb14 loyd 7303 ..."), kept only when the mod-97 check passes.
IBAN_ANY = re.compile(r"(?i)\b[a-z]{2}\d{2}(?:[ -]?[a-z0-9]{4}){2,7}(?:[ -]?[a-z0-9]{1,4})?\b")


def iban_ok(value: str) -> bool:
    """True when ``value`` (any case, spaces or dashes allowed) has an IBAN's length and passes mod-97."""
    v = re.sub(r"[ -]", "", value).upper()
    if not 15 <= len(v) <= 34 or not v.isalnum():
        return False
    digits = "".join(str(int(c, 36)) for c in v[4:] + v[:4])
    return int(digits) % 97 == 1


_JOB_HEADS = (
    r"manager|engineer|consultant|technician|administrator|director|cleaner|operator|controller|distributor|"
    r"installer|assistant|officer|analyst|designer|developer|nurse|teacher|clerk|specialist|coordinator|"
    r"supervisor|scientist|architect|accountant|agent|worker|driver|mechanic|electrician|soldier|attorney|"
    r"lawyer|physician|surgeon|pharmacist|therapist|editor|writer|producer|planner|inspector|representative|"
    r"salesperson|programmer|librarian|chef|cook|secretary|receptionist|executive|president|ceo|cfo|cto|"
    r"counselor|counsellor|advisor|adviser|auditor|broker|carpenter|plumber|pilot|dentist|paralegal|"
    r"therapist|trainer|tutor|professor|lecturer|surveyor|estimator|machinist|welder|laborer|labourer|"
    r"repairer|setter|tender|fabricator|assembler|dispatcher|examiner|investigator|appraiser|buyer|"
    r"photographer|artist|musician|author|journalist|reporter|historian|economist|psychologist|"
    r"veterinarian|paramedic|firefighter|guard|janitor|housekeeper|caretaker|groundskeeper|farmer|"
    r"technologist|hygienist|aide|attendant|instructor|head"
)
JOB_LINE = re.compile(rf"(?im)^[ \t>?*-]*((?:[\w-]+[ \t]+){{0,5}}(?:{_JOB_HEADS}))[ \t]*$")
# Acronyms and words the small spaCy model tags as ORG/PERSON in support chats: never personal.
NOT_PII = {
    "ssn", "iban", "atm", "pin", "id", "cvv", "cvc", "otp", "faq", "api", "url", "sms", "usd", "eur", "gbp",
    "vpn", "dob", "zip", "email", "e-mail", "bot", "ai", "tv", "pdf", "ceo", "iban code", "swift", "bic",
    "visa", "mastercard", "amex", "paypal", "wifi", "wi-fi", "ok", "okay", "thanks", "hi", "hello",
    # sentence starts the small model mistakes for names
    "name", "my", "why", "how", "what", "when", "where", "who", "which", "contact", "please", "can", "could", "would",
    "hey", "dear", "thank you", "sorry", "help", "urgent", "i", "we", "you", "team", "support", "sir", "madam",
    # currency and crypto codes
    "aud", "brl", "cad", "chf", "cny", "czk", "dkk", "hkd", "huf", "inr", "jpy", "krw", "mxn", "nok", "nzd",
    "pln", "ron", "rub", "sek", "sgd", "thb", "try", "zar", "aed", "btc", "eth", "usdt", "bitcoin", "ethereum",
}  # fmt: skip
HAS_DIGIT = re.compile(r"\d")
HAS_SPACE = re.compile(r"\s")
ID_SENSITIVE = {"PERSON", "ORGANIZATION", "LOCATION", "NRP"}
# Phone shapes phonenumbers rejects as unallocated (fictional 555 / 7700 900 ranges, typos) but that are
# phone numbers all the same: international "+CC ...", US "(415) 555-0134", national trunk "0xx ...".
PHONE_SHAPES = [
    (re.compile(r"(?<![\w+])\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,8}(?:[ .-]\d{2,8}){1,5}(?:\s?x\d{1,5})?\b"), 0.5),
    (re.compile(r"(?<!\w)\(\d{3}\)\s?\d{3}[ .-]\d{4}(?:\s?x\d{1,5})?\b"), 0.5),
    (re.compile(r"(?<![\w/.-])0\d{2,4}[ -]\d{3,4}[ -]?\d{3,4}\b(?![/.-]\d)"), 0.4),
]
AGE = [
    (re.compile(r"(?i)\b(\d{1,3})(?=[\s-]?(?:(?:years?|yrs?)[\s-]+old|y/?o\b))"), 0.6),
    (re.compile(r"(?i)\b(?:aged?|turn(?:ed|s|ing)?|age\s+is|age:)\s+(\d{1,3})\b"), 0.55),
]
TITLE = re.compile(
    r"\b(?:Mr|Mrs|Ms|Mx|Dr|Prof|Sr|Sra|Srta|Mme|Mlle|Herr|Frau|Fr|Hr)\.(?=\s)|\b(?:Miss|Sir|Madam|Dame|Lord|Lady)\b(?=\s+[A-Z])"
)
DOB_CONTEXT = re.compile(r"(?i)\b(?:born|birth|birthday|birthdate|d\.?o\.?b\.?)\b")
DATE = re.compile(
    r"\b(?:\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}|\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2})?)?|"
    r"(?:\d{1,2}\s+)?(?i:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?\s+\d{1,2}(?:st|nd|rd|th)?,?\s+\d{4}|"
    r"\d{1,2}(?:st|nd|rd|th)?\s+(?:of\s+)?(?i:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?,?\s+\d{4}|"
    r"(?:19|20)\d{2})\b"
)
# Relative dates spaCy tags as DATE/TIME: never personal, most of vanilla Presidio's false positives.
RELATIVE_DATE = re.compile(
    r"(?i)^(?:this|next|last|the|a|an|every|each|tomorrow|today|tonight|yesterday|morning|afternoon|evening|"
    r"night|week|month|year|day|days|weeks|months|years|weekend|now|recently|later|earlier|ago|daily|weekly|"
    r"monthly|annually|hours?|minutes?|seconds?|few|several|couple|of|one|two|three|\s|\W)+$"
)


# Where a phone number could be: a digit, then 5-40 digits / separators, then a digit, on one line.
PHONE_CANDIDATE = re.compile(r"[+(]?\d[\d \t().\-/x]{5,40}\d")

# A URL is personal data when it points at a person: an e-mail inside it, a profile path on a social or code
# site, or a query parameter that carries a name, an e-mail, a phone or a user id. Links to articles, threads,
# images and company sites are not, and scrubbing them destroys text (social posts are ~25 % URL tokens).
PERSONAL_URL = re.compile(
    r"(?i)(?:@|mailto:|[/.](?:u|user|users|profile|profiles|people|member|members|in|pub|~[\w.-]+)/[\w.%-]{2,}"
    r"|(?:facebook|fb|twitter|x|instagram|linkedin|github|gitlab|tiktok|youtube|medium|vk)\.com/(?!(?:r|watch|"
    r"hashtag|search|status|share|sharer|home|about|help|intent|login|p|reel|explore|events|groups|pages|"
    r"company|jobs|results|channel|playlist|embed)\b)[@\w.%-]{2,}"
    r"|[?&](?:name|first_?name|last_?name|full_?name|email|e-mail|phone|tel|mobile|user|user_?id|uid|"
    r"username|login|account|address)=)"
)
# Legal-form words that make a spaCy ORG an organisation beyond doubt ("Aunt Bertha Inc").
CORPORATE_SUFFIX = re.compile(
    r"(?i)\b(?:inc|ltd|llc|llp|plc|gmbh|ag|sa|srl|bv|nv|oy|ab|as|corp|corporation|company|co|group|holdings|"
    r"associates|partners|bank|insurance|technologies|solutions|consulting|capital|labs)\b\.?$"
)
# Words before an ORG (or inside it) that say it is someone's employer, school or bank. Presidio's context
# enhancer matches them as substrings of the 5 words before the entity ("work" also finds "worked",
# "coworker"), so nothing short or common enough to sit inside ordinary words ("at", "for", "cto", "firm").
ORG_CONTEXT = [
    "work", "employ", "compan", "office", "founde", "joined", "hired", "colleague", "boss", "manager",
    "director", "intern", "school", "universit", "college", "student", "studied", "bank", "customer", "client",
    "president", "member", "account", "team", "staff", "vendor", "supplier", "insur",
]  # fmt: skip
