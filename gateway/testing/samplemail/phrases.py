"""Who writes the sample mail and what they say: senders and per-language phrases.

Invented names only; every domain is under example.org or example.net (RFC 2606). German,
French, Japanese and English, with emoji, so that encodings are exercised the way a family
mailbox exercises them.
"""

from __future__ import annotations

from dataclasses import dataclass

RECIPIENT = ("Alice Martin", "alice@example.org")
"""Display name and address of the mailbox owner every sample is sent to."""


@dataclass(frozen=True)
class Sender:
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


FAMILY = (
    Sender("Jürgen Müller", "juergen.mueller@example.net", "de", 1),
    Sender("Käthe Schröder", "kaethe.schroeder@example.org", "de", 1),
    Sender("Oma Gisela 🌻", "gisela.braun@example.net", "de", 1),
    Sender("Élodie Lefèvre", "elodie.lefevre@example.net", "fr", 1),
    Sender("François Dubois", "francois.dubois@example.org", "fr", 1),
    Sender("Zoé Garnier 🎉", "zoe.garnier@example.net", "fr", 1),
    Sender("山田 花子", "hanako.yamada@example.net", "ja", 9),
    Sender("佐藤 健", "ken.sato@example.org", "ja", 9),
    Sender("Tom Baker", "tom.baker@example.org", "en", -5),
    Sender("Priya Raman", "priya.raman@example.net", "en", 0),
    Sender("Uncle Ned 🎣", "ned.martin@example.net", "en", -6),
)
NEWSLETTERS = (
    Sender("Gartenfreunde Südstadt e.V.", "newsletter@gartenfreunde.example.org", "de", 1),
    Sender("Le Petit Fromager", "lettre@fromager.example.net", "fr", 1),
    Sender("みどり書店", "news@midori-books.example.net", "ja", 9),
    Sender("Example Garden Club 🌱", "digest@garden-club.example.org", "en", 0),
)
SHOPS = (
    Sender("Bücherstube am Markt", "bestellung@buecherstube.example.net", "de", 1),
    Sender("La Boutique d'Élise", "commandes@boutique-elise.example.org", "fr", 1),
    Sender("ねこ雑貨店", "order@neko-zakka.example.net", "ja", 9),
    Sender("Example Outdoor Supply", "orders@outdoor.example.net", "en", -8),
)

# Per-language phrases. {first} is the recipient's first name, {sender} the sender's,
# {n} an order or issue number, {day} a weekday.
TEXT: dict[str, dict[str, tuple[str, ...]]] = {
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

RECIPIENT_FIRST = {"de": "Alice", "fr": "Alice", "ja": "アリス", "en": "Alice"}
