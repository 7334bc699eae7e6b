"""Deterministic, realistic sample mail for the demo, tests and benchmarks.

A gateway is only as good as its handling of the mail people actually get, so the samples
cover what a family mailbox sees: personal notes, newsletters and shop orders, written in
German, French, Japanese and English, with emoji. Structurally they mix text/plain,
multipart/alternative (RFC 2046 §5.1.4), multipart/mixed with attachments, forwarded
message/rfc822 parts (RFC 2046 §5.2.1), RFC 2047 encoded-words in subjects and display names,
RFC 2231 encoded attachment file names, and 7bit, 8bit, quoted-printable and base64 bodies
(RFC 2045 §6). Every message is RFC 5322 with CRLF line endings and lines under 78 octets.

The same (count, seed, start, size_profile) always yields the same bytes. Invented names only;
every domain is under example.org or example.net (RFC 2606), every IP address in a
documentation range (RFC 5737).

The standard library's `email` package supplies the encodings (header encoded-words, address
formatting, RFC 2231 parameters, dates); the MIME tree is assembled directly so that 10,000
messages take seconds rather than minutes.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import math
import random
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from email.header import Header
from email.utils import encode_rfc2231, format_datetime, formataddr
from html import escape

__all__ = [
    "DEFAULT_START",
    "MAX_ATTACHMENT_BYTES",
    "RECIPIENT",
    "SIZE_PROFILES",
    "generate",
    "iter_messages",
    "make_message",
]

DEFAULT_START = dt.datetime(2024, 3, 4, 7, 30, tzinfo=dt.UTC)
"""When the first message is dated unless `start` is given: fixed, so output is reproducible."""

RECIPIENT = ("Alice Martin", "alice@example.org")
"""Display name and address of the mailbox owner every sample is sent to."""

MAX_ATTACHMENT_BYTES = 2 * 1024 * 1024
"""Largest decoded attachment any profile produces."""

TEXT_WIDTH = 72
"""Body text is wrapped to this many characters (RFC 5322 §2.1.1 recommends at most 78)."""

JAPANESE_WIDTH = 24
"""Japanese has no spaces to wrap at; lines are cut after this many characters (72 octets)."""

MAX_GAP_SECONDS = 6 * 3600
"""Largest gap between consecutive messages' dates in `generate`."""

_B64_LINE = 76  # RFC 2045 §6.8: encoded lines are at most 76 characters.
_RFC2231_CHUNK = 56  # Percent-encoded characters per RFC 2231 §3 continuation line.


@dataclass(frozen=True)
class _Profile:
    """How large messages get: body paragraphs and attachment share/sizes."""

    name: str
    attachment_share: float
    attachment_min: int
    attachment_max: int
    paragraphs_median: float
    paragraphs_sigma: float


_PROFILES = {
    # Small messages for the demo and unit tests: a few KB each, tiny attachments.
    "demo": _Profile("demo", 0.15, 600, 6_000, 2.0, 0.4),
    # Benchmarks: median around 4 KB, one in ten carries an attachment up to 2 MB
    # (log-uniform sizes, so most attachments are tens or hundreds of KB).
    "realistic": _Profile("realistic", 0.10, 15_000, MAX_ATTACHMENT_BYTES, 2.5, 0.6),
}

SIZE_PROFILES: tuple[str, ...] = tuple(_PROFILES)
"""Names accepted by `size_profile`."""


@dataclass(frozen=True)
class _Sender:
    name: str
    address: str
    lang: str
    utc_offset_hours: int

    @property
    def domain(self) -> str:
        return self.address.rsplit("@", 1)[1]

    @property
    def first_name(self) -> str:
        return self.name.split()[0] if self.lang != "ja" else self.name.split()[-1]


_FAMILY = (
    _Sender("Jürgen Müller", "juergen.mueller@example.net", "de", 1),
    _Sender("Käthe Schröder", "kaethe.schroeder@example.org", "de", 1),
    _Sender("Oma Gisela 🌻", "gisela.braun@example.net", "de", 1),
    _Sender("Élodie Lefèvre", "elodie.lefevre@example.net", "fr", 1),
    _Sender("François Dubois", "francois.dubois@example.org", "fr", 1),
    _Sender("Zoé Garnier 🎉", "zoe.garnier@example.net", "fr", 1),
    _Sender("山田 花子", "hanako.yamada@example.net", "ja", 9),
    _Sender("佐藤 健", "ken.sato@example.org", "ja", 9),
    _Sender("Tom Baker", "tom.baker@example.org", "en", -5),
    _Sender("Priya Raman", "priya.raman@example.net", "en", 0),
    _Sender("Uncle Ned 🎣", "ned.martin@example.net", "en", -6),
)
_NEWSLETTERS = (
    _Sender("Gartenfreunde Südstadt e.V.", "newsletter@gartenfreunde.example.org", "de", 1),
    _Sender("Le Petit Fromager", "lettre@fromager.example.net", "fr", 1),
    _Sender("みどり書店", "news@midori-books.example.net", "ja", 9),
    _Sender("Example Garden Club 🌱", "digest@garden-club.example.org", "en", 0),
)
_SHOPS = (
    _Sender("Bücherstube am Markt", "bestellung@buecherstube.example.net", "de", 1),
    _Sender("La Boutique d'Élise", "commandes@boutique-elise.example.org", "fr", 1),
    _Sender("ねこ雑貨店", "order@neko-zakka.example.net", "ja", 9),
    _Sender("Example Outdoor Supply", "orders@outdoor.example.net", "en", -8),
)

# Per-language phrases. {first} is the recipient's first name, {sender} the sender's,
# {n} an order or issue number, {day} a weekday.
_TEXT: dict[str, dict[str, tuple[str, ...]]] = {
    "de": {
        "greeting": ("Hallo {first},", "Liebe {first},", "Hi {first}!"),
        "signoff": ("Liebe Grüße\n{sender}", "Bis bald!\n{sender}", "Viele Grüße\n{sender}"),
        "family_subject": (
            "Fotos vom Wochenende 📷",
            "Omas Geburtstag am {day}",
            "Urlaubsplanung Sommer ☀️",
            "Kuchenrezept, wie versprochen",
            "Wer holt die Kinder am {day} ab?",
            "Grüße aus München",
        ),
        "family": (
            "Wir sind gut zu Hause angekommen, die Fahrt war zum Glück entspannt.",
            "Die Kinder reden immer noch von eurem Garten und den Äpfeln.",
            "Am {day} wollen wir grillen, habt ihr Lust vorbeizukommen?",
            "Oma hat gefragt, ob du ihr das Rezept für den Käsekuchen schickst.",
            "Ich habe die Fotos endlich sortiert, die schönsten hänge ich an.",
            "Übrigens: der Schlüssel liegt wie immer unter dem Blumentopf.",
            "Wegen der Ferien müssen wir uns noch abstimmen, wer wann fährt.",
            "Das Wetter war herrlich, nur am Sonntag hat es kurz geregnet.",
            "Sag Bescheid, ob der {day} bei euch passt, sonst finden wir etwas anderes.",
            "Max hat übrigens sein Seepferdchen geschafft und ist mächtig stolz.",
        ),
        "news_subject": (
            "Gartenbrief Nr. {n}: Frühling im Beet 🌱",
            "Ihr Wochenrückblick – Ausgabe {n}",
            "Termine im März und ein Gruß vom Vorstand",
        ),
        "news_heading": ("Aus dem Verein", "Tipps für diese Woche", "Termine", "Fundstücke"),
        "news": (
            "Die Tomaten dürfen jetzt auf die Fensterbank, ins Freie erst nach den Eisheiligen.",
            "Unser Sommerfest findet am {day} ab 15 Uhr auf der Gemeinschaftswiese statt.",
            "Wer Saatgut übrig hat, kann es gern in die Tauschkiste am Vereinsheim legen.",
            "Der Kompostplatz ist wegen Umbauarbeiten zwei Wochen lang geschlossen.",
            "Neu im Vorstand begrüßen wir Frau Özdemir, die sich um die Jugendgruppe kümmert.",
            "Bitte denken Sie daran, die Wasseruhren bis Monatsende abzulesen.",
        ),
        "shop_subject": (
            "Ihre Bestellung Nr. {n} bei der Bücherstube",
            "Versandbestätigung für Bestellung {n} 📦",
            "Rechnung zu Ihrer Bestellung {n}",
        ),
        "shop": (
            "Vielen Dank für Ihre Bestellung! Wir haben sie erhalten und packen gerade.",
            "Die Lieferung erfolgt voraussichtlich am {day} mit DHL-Paket.",
            "Ihre Rechnung finden Sie im Anhang dieser E-Mail.",
            "Bei Fragen antworten Sie einfach auf diese Nachricht.",
        ),
        "product": (
            "Gartenbuch „Naschbalkon“",
            "Kochbuch Südtirol",
            "Kalender 2025",
            "Lesezeichen Eule",
        ),
        "forward_note": (
            "Schau mal, das kam gestern bei mir an.",
            "Leite ich dir weiter, vielleicht interessiert es dich.",
        ),
        "invoice": ("Rechnung_{n}_März.pdf", "Rechnung-{n}.pdf"),
        "photo": ("Grillfest_Müllers.png", "Strand_Sonnenuntergang.png", "Ostern.png"),
        "days": ("Montag", "Dienstag", "Mittwoch", "Freitag", "Samstag", "Sonntag"),
    },
    "fr": {
        "greeting": ("Bonjour {first},", "Coucou {first} !", "Chère {first},"),
        "signoff": ("Bises,\n{sender}", "À bientôt,\n{sender}", "Amitiés,\n{sender}"),
        "family_subject": (
            "Dîner chez nous {day} ?",
            "Photos de la fête 🎉",
            "Les vacances d'été",
            "Recette de la tarte aux pommes",
            "Nouvelles de Lyon",
        ),
        "family": (
            "Nous sommes bien rentrés, le voyage s'est très bien passé.",
            "Les enfants parlent encore de la journée à la plage.",
            "Est-ce que vous êtes libres {day} soir pour un dîner ?",
            "Mamie demande si tu as reçu sa carte postale.",
            "J'ai enfin trié les photos, je t'envoie les plus belles.",
            "Il a fait un temps magnifique, à part une averse dimanche.",
            "Dis-moi si {day} vous convient, sinon on trouvera autre chose.",
            "Léa a commencé le piano et elle s'entraîne tous les soirs.",
        ),
        "news_subject": (
            "La lettre du fromager n°{n} 🧀",
            "Nouveautés de la semaine – édition {n}",
        ),
        "news_heading": ("Le fromage du mois", "Accords mets et vins", "Agenda"),
        "news": (
            "Ce mois-ci, nous vous faisons découvrir un comté affiné vingt-quatre mois.",
            "La dégustation aura lieu {day} à 18 h, dans la boutique de la rue des Lilas.",
            "Pour accompagner un chèvre frais, essayez un sancerre bien frais.",
            "Nos paniers garnis sont de retour pour les fêtes, pensez à réserver.",
            "Merci à tous nos fidèles clients pour cette belle année.",
        ),
        "shop_subject": (
            "Confirmation de commande n° {n}",
            "Votre colis est en route 📦 (commande {n})",
            "Facture de votre commande {n}",
        ),
        "shop": (
            "Merci pour votre commande ! Elle est en cours de préparation.",
            "La livraison est prévue {day} par Colissimo.",
            "Vous trouverez votre facture en pièce jointe.",
            "Pour toute question, répondez simplement à ce message.",
        ),
        "product": ("Foulard en soie", "Savon à la lavande", "Carnet « Été »", "Bougie figue"),
        "forward_note": (
            "Regarde ce que j'ai reçu hier.",
            "Je te transfère ce message, ça peut t'intéresser.",
        ),
        "invoice": ("Facture n°{n} – décembre.pdf", "facture-{n}.pdf"),
        "photo": ("fête_été.png", "coucher_de_soleil.png"),
        "days": ("lundi", "mardi", "mercredi", "vendredi", "samedi", "dimanche"),
    },
    "ja": {
        "greeting": ("{first}さん", "{first}さん、こんにちは。"),
        "signoff": ("よろしくお願いします。\n{sender}", "またね。\n{sender}"),
        "family_subject": (
            "週末の予定について",
            "写真を送ります 📷",
            "お正月の集まり",
            "先日はありがとうございました",
        ),
        "family": (
            "先日は遊びに来てくれてありがとう。子どもたちもとても喜んでいました。",
            "{day}に家族で食事をしようと思っているのですが、都合はどうですか。",
            "桜がちょうど見頃になってきました。公園はとてもにぎやかです。",
            "写真を整理したので、よく撮れたものを送りますね。",
            "おばあちゃんが、また一緒に料理をしたいと言っていました。",
            "夏休みの旅行の計画を少しずつ立て始めています。",
        ),
        "news_subject": ("みどり書店だより 第{n}号", "今月の新刊とイベントのお知らせ 📚"),
        "news_heading": ("今月のおすすめ", "イベント情報", "店長より"),
        "news": (
            "今月は春にぴったりの絵本と、料理の本を特集しています。",
            "{day}の午後に、作家さんをお招きしてサイン会を開きます。",
            "ポイントカードの有効期限が近いお客様は、お早めにご利用ください。",
            "店内のカフェコーナーでは、季節のケーキを始めました。",
        ),
        "shop_subject": ("ご注文ありがとうございます（注文番号 {n}）", "商品を発送しました 📦"),
        "shop": (
            "このたびはご注文いただき、誠にありがとうございます。",
            "商品は{day}にお届けする予定です。",
            "領収書を添付しましたので、ご確認ください。",
            "ご不明な点がございましたら、このメールにご返信ください。",
        ),
        "product": ("ねこの手ぬぐい", "招き猫の箸置き", "肉球マグカップ"),
        "forward_note": ("これ、昨日届いたメールです。", "参考までに転送します。"),
        "invoice": ("領収書_{n}.pdf",),
        "photo": ("花見.png", "家族写真.png"),
        "days": ("月曜日", "水曜日", "金曜日", "土曜日", "日曜日"),
    },
    "en": {
        "greeting": ("Hi {first},", "Hello {first},", "Dear {first},"),
        "signoff": ("Love,\n{sender}", "Cheers,\n{sender}", "Talk soon,\n{sender}"),
        "family_subject": (
            "Grandma's recipe 🍰",
            "Pictures from the lake",
            "Are we still on for {day}?",
            "Thanksgiving plans",
            "Quick question about the car",
        ),
        "family": (
            "We got home safely, the drive was long but the kids slept most of the way.",
            "Are you still free on {day}? We could meet at the park around noon.",
            "Grandma asked whether you ever got the recipe she sent last month.",
            "I finally sorted the pictures and attached the best ones.",
            "The weather was lovely, apart from a short thunderstorm on Sunday.",
            "Let me know if {day} works for you, otherwise we will find another day.",
            "Sam started swimming lessons and is very proud of himself.",
            "The garden is a jungle again; I really need to mow the lawn this weekend.",
        ),
        "news_subject": (
            "Garden Club Digest #{n}: seed swap and spring tips",
            "This week at the Garden Club 🌱",
        ),
        "news_heading": ("Club news", "Tip of the week", "Upcoming events"),
        "news": (
            "Our spring seed swap is on {day} from 10 am at the community hall.",
            "Now is a good time to divide perennials before they start growing in earnest.",
            "Thanks to everyone who helped clean up the allotments last weekend.",
            "Volunteers are still needed for the plant sale; reply if you can help.",
            "Remember to cover young seedlings on nights when frost is forecast.",
        ),
        "shop_subject": (
            "Your order #{n} has shipped 📦",
            "Order confirmation #{n}",
            "Your receipt for order {n}",
        ),
        "shop": (
            "Thanks for your order! We are getting it ready to ship.",
            "Your package should arrive on {day}.",
            "Your receipt is attached to this email.",
            "Questions? Just reply to this message.",
        ),
        "product": ("Trail backpack 28 L", "Camping mug", "Wool socks (2 pairs)", "Headlamp"),
        "forward_note": ("Look what arrived yesterday.", "Forwarding this, thought you'd like it."),
        "invoice": ("receipt-{n}.pdf", "Invoice {n}.pdf"),
        "photo": ("lake_sunset.png", "birthday_cake.png"),
        "days": ("Monday", "Tuesday", "Wednesday", "Friday", "Saturday", "Sunday"),
    },
}

_RECIPIENT_FIRST = {"de": "Alice", "fr": "Alice", "ja": "アリス", "en": "Alice"}
_RELAYS = ("mx1.example.org", "mx2.example.org")
_SENDER_SITES = ("192.0.2", "198.51.100", "203.0.113")


# -- encoding helpers -----------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _address_field(field: str, name: str, address: str) -> str:
    """An address field; the display name RFC 2047-encoded when not ASCII, folded when long."""
    mailbox = formataddr((name, address), charset="utf-8")
    line = f"{field}: {mailbox}"
    if len(line) <= 78:
        return line
    display, _, angle = mailbox.rpartition(" <")
    return f"{field}: {display}\n <{angle}"


def _header(name: str, value: str) -> str:
    """One header field, folded at whitespace and RFC 2047-encoded only when needed."""
    if value.isascii() and len(name) + len(value) < 76:
        return f"{name}: {value}"
    charset = "us-ascii" if value.isascii() else "utf-8"
    return f"{name}: " + Header(value, charset, header_name=name).encode(linesep="\n")


def _rfc2231_params(parameter: str, filename: str) -> list[str]:
    """`parameter` for a file name: plain when ASCII, else RFC 2231 §4 (with §3 continuations)."""
    if filename.isascii():
        return [f'{parameter}="{filename}"']
    encoded = encode_rfc2231(filename, "utf-8")
    if len(encoded) <= _RFC2231_CHUNK:
        return [f"{parameter}*={encoded}"]
    chunks: list[str] = []
    rest = encoded
    while rest:
        cut = min(_RFC2231_CHUNK, len(rest))
        # Never split a %XX escape between two continuation lines.
        while cut < len(rest) and "%" in rest[max(0, cut - 2) : cut]:
            cut -= 1
        chunks.append(rest[:cut])
        rest = rest[cut:]
    return [f"{parameter}*{index}*={chunk}" for index, chunk in enumerate(chunks)]


def _wrap(text: str, lang: str) -> str:
    """Greedy line wrap (or fixed-width cut for Japanese), keeping lines far below 998 octets."""
    if lang == "ja":
        return "\n".join(
            text[start : start + JAPANESE_WIDTH] for start in range(0, len(text), JAPANESE_WIDTH)
        )
    lines: list[str] = []
    line = ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > TEXT_WIDTH:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        lines.append(line)
    return "\n".join(lines)


def _base64_lines(data: bytes) -> bytes:
    encoded = base64.b64encode(data)
    return b"\n".join(
        encoded[start : start + _B64_LINE] for start in range(0, len(encoded), _B64_LINE)
    )


@dataclass
class _Part:
    """A MIME entity under construction: header lines and a body, LF line endings."""

    headers: list[str]
    body: bytes
    eight_bit: bool = False

    def render(self) -> bytes:
        return "\n".join(self.headers).encode() + b"\n\n" + self.body


def _text_part(text: str, subtype: str, rng: random.Random, *, html: bool = False) -> _Part:
    """A text part with a transfer encoding the way real clients pick one (RFC 2045 §6)."""
    data = (text if text.endswith("\n") else text + "\n").encode()
    headers = [f"Content-Type: text/{subtype}; charset=utf-8"]
    if text.isascii() and not html:
        return _Part(headers + ["Content-Transfer-Encoding: 7bit"], data)
    roll = rng.random()
    choice = "quoted-printable" if html or roll < 0.45 else "8bit" if roll < 0.85 else "base64"
    if choice == "8bit":
        return _Part(headers + ["Content-Transfer-Encoding: 8bit"], data, eight_bit=True)
    if choice == "base64":
        return _Part(headers + ["Content-Transfer-Encoding: base64"], _base64_lines(data) + b"\n")
    return _Part(
        headers + ["Content-Transfer-Encoding: quoted-printable"],
        binascii.b2a_qp(data, istext=True),
    )


def _multipart(subtype: str, parts: list[_Part], rng: random.Random) -> _Part:
    """RFC 2046 §5.1: the "=_" boundary prefix cannot occur in QP or base64 bodies."""
    boundary = f"=_{rng.getrandbits(64):016x}"
    chunks = [b"This is a multi-part message in MIME format.\n"]
    for part in parts:
        chunks.append(f"--{boundary}\n".encode())
        chunks.append(part.render())
        if not part.body.endswith(b"\n"):
            chunks.append(b"\n")
    chunks.append(f"--{boundary}--\n".encode())
    eight_bit = any(part.eight_bit for part in parts)
    headers = [f"Content-Type: multipart/{subtype};", f' boundary="{boundary}"']
    if eight_bit:
        # RFC 2045 §6.4: a multipart must declare 8bit if anything inside is 8bit.
        headers.append("Content-Transfer-Encoding: 8bit")
    return _Part(headers, b"".join(chunks), eight_bit)


def _with_params(field: str, params: list[str]) -> list[str]:
    """A header field whose parameters each sit on their own folded line."""
    return [f"{field};"] + [
        f" {param}" + (";" if n < len(params) - 1 else "") for n, param in enumerate(params)
    ]


def _attachment(mime_type: str, filename: str, data: bytes) -> _Part:
    headers = _with_params(f"Content-Type: {mime_type}", _rfc2231_params("name", filename))
    headers += _with_params(
        "Content-Disposition: attachment", _rfc2231_params("filename", filename)
    )
    headers.append("Content-Transfer-Encoding: base64")
    return _Part(headers, _base64_lines(data) + b"\n")


def _pdf_bytes(rng: random.Random, size: int) -> bytes:
    head = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
    tail = b"\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"
    return head + rng.randbytes(max(0, size - len(head) - len(tail))) + tail


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_bytes(rng: random.Random, size: int) -> bytes:
    width, height = rng.choice(((640, 480), (800, 600), (1024, 768)))
    head = b"\x89PNG\r\n\x1a\n" + _png_chunk(
        b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    )
    tail = _png_chunk(b"IEND", b"")
    return (
        head + _png_chunk(b"IDAT", rng.randbytes(max(0, size - len(head) - len(tail) - 12))) + tail
    )


# -- content --------------------------------------------------------------------------


def _paragraph_count(rng: random.Random, profile: _Profile) -> int:
    return max(
        1, round(rng.lognormvariate(math.log(profile.paragraphs_median), profile.paragraphs_sigma))
    )


def _paragraphs(
    rng: random.Random, pool: tuple[str, ...], count: int, values: dict[str, str]
) -> list[str]:
    return [
        " ".join(rng.choice(pool).format(**values) for _ in range(rng.randint(2, 4)))
        for _ in range(count)
    ]


def _html(title: str, sections: list[tuple[str, list[str]]], footer: str) -> str:
    """A newsletter-style HTML body: inline styles and a layout table, like bulk senders use.

    `title` and headings are plain text; paragraphs and `footer` are HTML (callers escape).
    """
    title = escape(title)
    lines = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8"><title>' + title + "</title></head>",
        '<body style="margin:0;padding:0;background:#f4f4f4;font-family:Arial,sans-serif">',
        '<table role="presentation" width="100%" cellpadding="0" cellspacing="0">',
        '<tr><td align="center"><table width="600" style="background:#ffffff;padding:24px">',
        f'<tr><td><h1 style="color:#2e7d32;font-size:22px">{title}</h1></td></tr>',
    ]
    for heading, paragraphs in sections:
        if heading:
            lines.append(
                f'<tr><td><h2 style="font-size:17px;color:#333">{escape(heading)}</h2></td></tr>'
            )
        for paragraph in paragraphs:
            lines.append(
                f'<tr><td><p style="font-size:14px;line-height:1.5">{paragraph}</p></td></tr>'
            )
    lines.append(f'<tr><td style="font-size:11px;color:#888">{footer}</td></tr>')
    lines.append("</table></td></tr></table></body></html>")
    return "\n".join(lines)


@dataclass
class _Content:
    """What a message says, before it is given a MIME shape."""

    sender: _Sender
    subject: str
    text: str
    html: str | None
    extra_headers: list[str]
    attachment: tuple[str, str, bytes] | None = None


def _family(i: int, rng: random.Random, profile: _Profile, with_attachment: bool) -> _Content:
    sender = rng.choice(_FAMILY)
    words = _TEXT[sender.lang]
    values = {"day": rng.choice(words["days"]), "first": _RECIPIENT_FIRST[sender.lang]}
    subject = rng.choice(words["family_subject"]).format(**values)
    extra: list[str] = []
    if rng.random() < 0.25:
        subject = "Re: " + subject
        parent = f"<{rng.getrandbits(48):012x}@{RECIPIENT[1].split('@')[1]}>"
        extra += [f"In-Reply-To: {parent}", f"References: {parent}"]
    body = [rng.choice(words["greeting"]).format(**values)]
    body += [
        _wrap(p, sender.lang)
        for p in _paragraphs(rng, words["family"], _paragraph_count(rng, profile), values)
    ]
    body.append(rng.choice(words["signoff"]).format(sender=sender.first_name))
    attachment = None
    if with_attachment:
        name = rng.choice(words["photo"])
        attachment = ("image/png", name, _png_bytes(rng, _attachment_size(rng, profile)))
    return _Content(sender, subject, "\n\n".join(body), None, extra, attachment)


def _newsletter(i: int, rng: random.Random, profile: _Profile, with_attachment: bool) -> _Content:
    sender = rng.choice(_NEWSLETTERS)
    words = _TEXT[sender.lang]
    values = {"day": rng.choice(words["days"]), "n": str(100 + i % 900)}
    subject = rng.choice(words["news_subject"]).format(**values)
    sections: list[tuple[str, list[str]]] = []
    for _ in range(max(1, _paragraph_count(rng, profile) - 1) + 1):
        heading = rng.choice(words["news_heading"])
        sections.append((heading, _paragraphs(rng, words["news"], rng.randint(1, 2), values)))
    token = f"{rng.getrandbits(64):016x}"
    unsubscribe = f"https://{sender.domain}/unsubscribe?u={token}"
    text_lines: list[str] = [subject, "=" * min(len(subject), TEXT_WIDTH)]
    for heading, paragraphs in sections:
        text_lines += ["", heading.upper() if heading.isascii() else heading, ""]
        text_lines += [_wrap(p, sender.lang) for p in paragraphs]
    text_lines += ["", "--", unsubscribe]
    html = _html(
        subject,
        [(heading, [escape(p) for p in paragraphs]) for heading, paragraphs in sections],
        f'<a href="{unsubscribe}">Unsubscribe</a>',
    )
    extra = [
        f"List-Id: <news.{sender.domain}>",
        f"List-Unsubscribe:\n <{unsubscribe}>",
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        "Precedence: bulk",
    ]
    attachment = None
    if with_attachment:
        attachment = (
            "application/pdf",
            f"programm-{values['n']}.pdf",
            _pdf_bytes(rng, _attachment_size(rng, profile)),
        )
    return _Content(sender, subject, "\n".join(text_lines), html, extra, attachment)


def _shop(i: int, rng: random.Random, profile: _Profile, with_attachment: bool) -> _Content:
    sender = rng.choice(_SHOPS)
    words = _TEXT[sender.lang]
    order = f"{2024000 + i * 7 + rng.randint(0, 6)}"
    values = {"day": rng.choice(words["days"]), "n": order, "first": _RECIPIENT_FIRST[sender.lang]}
    subject = rng.choice(words["shop_subject"]).format(**values)
    items = [
        (rng.choice(words["product"]), rng.randint(1, 3), rng.randint(299, 4999))
        for _ in range(rng.randint(1, 4))
    ]
    total = sum(qty * cents for _, qty, cents in items)
    intro = _paragraphs(rng, words["shop"], max(1, _paragraph_count(rng, profile) - 1), values)
    greeting = rng.choice(words["greeting"]).format(**values)
    rows = [f"{qty} x {name}  {qty * cents / 100:.2f} EUR" for name, qty, cents in items]
    text = "\n\n".join(
        [
            greeting,
            *(_wrap(p, sender.lang) for p in intro),
            f"#{order}\n" + "\n".join(rows) + f"\n= {total / 100:.2f} EUR",
            sender.name,
        ]
    )
    table = "".join(
        f"<tr><td>{escape(name)}</td><td>{qty}</td><td>{qty * cents / 100:.2f}&nbsp;EUR</td></tr>"
        for name, qty, cents in items
    )
    html = _html(
        subject,
        [
            ("", [escape(greeting), *(escape(p) for p in intro)]),
            ("", [f"<table>{table}</table>", f"<b>{total / 100:.2f}&nbsp;EUR</b>"]),
        ],
        escape(sender.name),
    )
    attachment = None
    if with_attachment:
        name = rng.choice(words["invoice"]).format(**values)
        attachment = ("application/pdf", name, _pdf_bytes(rng, _attachment_size(rng, profile)))
    return _Content(sender, subject, text, html, [], attachment)


def _attachment_size(rng: random.Random, profile: _Profile) -> int:
    """Log-uniform between the profile's bounds: many small files, a few large ones."""
    low, high = math.log(profile.attachment_min), math.log(profile.attachment_max)
    return min(MAX_ATTACHMENT_BYTES, int(math.exp(rng.uniform(low, high))))


# -- assembly -------------------------------------------------------------------------


def _body(content: _Content, rng: random.Random) -> _Part:
    text = _text_part(content.text, "plain", rng)
    if content.html is None:
        body = text
    else:
        body = _multipart(
            "alternative", [text, _text_part(content.html, "html", rng, html=True)], rng
        )
    if content.attachment is not None:
        mime_type, filename, data = content.attachment
        body = _multipart("mixed", [body, _attachment(mime_type, filename, data)], rng)
    return body


def _envelope(
    content: _Content, rng: random.Random, when: dt.datetime, *, received: bool
) -> list[str]:
    sender = content.sender
    local = when.astimezone(dt.timezone(dt.timedelta(hours=sender.utc_offset_hours)))
    headers: list[str] = []
    if received:
        relay = rng.choice(_RELAYS)
        site = f"{rng.choice(_SENDER_SITES)}.{rng.randint(2, 254)}"
        hop1 = when + dt.timedelta(seconds=rng.randint(1, 20))
        hop2 = hop1 + dt.timedelta(seconds=rng.randint(1, 40))
        queue1, queue2 = f"{rng.getrandbits(40):010X}", f"{rng.getrandbits(40):010X}"
        headers += [
            f"Return-Path: <{sender.address}>",
            f"Received: from smtp.{sender.domain}",
            f"\t(smtp.{sender.domain} [{site}])",
            f"\tby {relay} (Postfix) with ESMTPS id {queue2}",
            f"\tfor <{RECIPIENT[1]}>; {format_datetime(hop2)}",
            f"Received: from [10.0.{rng.randint(0, 255)}.{rng.randint(2, 254)}] (unknown [{site}])",
            f"\tby smtp.{sender.domain} (Postfix) with ESMTPSA id {queue1};",
            f"\t{format_datetime(hop1.astimezone(local.tzinfo))}",
        ]
    headers += [
        _address_field("From", sender.name, sender.address),
        _address_field("To", *RECIPIENT),
        _header("Subject", content.subject),
        f"Date: {format_datetime(local)}",
        f"Message-ID: <{local:%Y%m%d%H%M%S}.{rng.getrandbits(48):012x}@{sender.domain}>",
        *content.extra_headers,
        "MIME-Version: 1.0",
    ]
    return headers


def _message(content: _Content, rng: random.Random, when: dt.datetime, *, received: bool) -> _Part:
    body = _body(content, rng)
    return _Part(
        _envelope(content, rng, when, received=received) + body.headers, body.body, body.eight_bit
    )


def _forward(i: int, rng: random.Random, when: dt.datetime, profile: _Profile) -> _Part:
    """A family member forwards a newsletter or order: a text note plus message/rfc822."""
    inner_when = when - dt.timedelta(seconds=rng.randint(3600, 5 * 86400))
    inner_content = rng.choice((_newsletter, _shop))(i, rng, profile, False)
    inner = _message(inner_content, rng, inner_when, received=True)
    sender = rng.choice(_FAMILY)
    words = _TEXT[sender.lang]
    note = rng.choice(words["forward_note"]) + "\n\n"
    note += rng.choice(words["signoff"]).format(sender=sender.first_name)
    # RFC 2046 §5.2.1: message/rfc822 allows only 7bit, 8bit or binary.
    wrapped = _Part(
        ["Content-Type: message/rfc822", "Content-Disposition: inline"]
        + (["Content-Transfer-Encoding: 8bit"] if inner.eight_bit else []),
        inner.render(),
        inner.eight_bit,
    )
    body = _multipart("mixed", [_text_part(note, "plain", rng), wrapped], rng)
    outer = _Content(sender, "Fwd: " + inner_content.subject, note, None, [])
    envelope = _envelope(outer, rng, when, received=True)
    return _Part(envelope + body.headers, body.body, body.eight_bit)


def make_message(
    i: int,
    rng: random.Random,
    when: dt.datetime,
    *,
    size_profile: str = "demo",
) -> bytes:
    """Build message number `i`, dated `when`, drawing every choice from `rng`.

    A naive `when` is taken as UTC. The Date: header names the same instant, written in the
    sender's own UTC offset (RFC 5322 §3.3). Returns the message with CRLF line endings.
    """
    profile = _profile(size_profile)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    with_attachment = rng.random() < profile.attachment_share
    roll = rng.random()
    if not with_attachment and roll < 0.12:
        message = _forward(i, rng, when, profile)
    else:
        kind = _family if roll < 0.45 else _newsletter if roll < 0.75 else _shop
        content = kind(i, rng, profile, with_attachment)
        message = _message(content, rng, when, received=True)
    return message.render().replace(b"\n", b"\r\n")


def _profile(name: str) -> _Profile:
    try:
        return _PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown size_profile {name!r}; choose from {SIZE_PROFILES}") from None


def iter_messages(
    count: int,
    seed: int = 0,
    *,
    start: dt.datetime | None = None,
    size_profile: str = "demo",
) -> Iterator[bytes]:
    """Yield `count` messages one at a time (for benchmarks too large to hold in memory).

    Dates start at `start` (default DEFAULT_START; naive means UTC) and increase by
    whole seconds, up to MAX_GAP_SECONDS apart, so mailbox order is date order.
    """
    if count < 0:
        raise ValueError("count must not be negative")
    _profile(size_profile)
    rng = random.Random(seed)
    when = DEFAULT_START if start is None else start
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    when = when.replace(microsecond=0)
    for i in range(count):
        yield make_message(i, rng, when, size_profile=size_profile)
        when += dt.timedelta(seconds=rng.randint(60, MAX_GAP_SECONDS))


def generate(
    count: int,
    seed: int = 0,
    *,
    start: dt.datetime | None = None,
    size_profile: str = "demo",
) -> list[bytes]:
    """Return `count` deterministic sample messages (CRLF, RFC 5322); see `iter_messages`.

    size_profile "demo" keeps messages small; "realistic" gives a median near 4 KB with
    about one message in ten carrying an attachment of up to MAX_ATTACHMENT_BYTES.
    """
    return list(iter_messages(count, seed, start=start, size_profile=size_profile))
