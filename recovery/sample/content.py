"""Fixed vocabularies and file bodies of the Gestima sample world.

Everything here is a constant or a pure function of its arguments, so worlds are
reproducible byte for byte.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

USERS: tuple[tuple[str, str, str, str], ...] = (
    # username, full name, email, role
    ("jnovak", "Jan Novák", "jan.novak@gestima.cz", "admin"),
    ("psvobodova", "Petra Svobodová", "petra.svobodova@gestima.cz", "sales"),
    ("tdvorak", "Tomáš Dvořák", "tomas.dvorak@gestima.cz", "engineer"),
    ("lcerna", "Lucie Černá", "lucie.cerna@gestima.cz", "sales"),
    ("mprochazka", "Martin Procházka", "martin.prochazka@gestima.cz", "engineer"),
    ("kkucerova", "Kateřina Kučerová", "katerina.kucerova@gestima.cz", "planner"),
    ("jvesely", "Jiří Veselý", "jiri.vesely@gestima.cz", "operator"),
    ("ehorakova", "Eva Horáková", "eva.horakova@gestima.cz", "sales"),
    ("pnemec", "Pavel Němec", "pavel.nemec@gestima.cz", "operator"),
    ("zmarkova", "Zuzana Marková", "zuzana.markova@gestima.cz", "engineer"),
    ("rpospisil", "Radek Pospíšil", "radek.pospisil@gestima.cz", "operator"),
)

MATERIALS: tuple[tuple[str, str, float, float], ...] = (
    # code, name, density g/cm3, price CZK/kg
    ("1.4301", "Nerez X5CrNi18-10 (AISI 304)", 7.90, 98.0),
    ("1.4404", "Nerez X2CrNiMo17-12-2 (316L)", 8.00, 142.0),
    ("1.4571", "Nerez X6CrNiMoTi17-12-2", 8.00, 156.0),
    ("1.0503", "Ocel C45", 7.85, 32.5),
    ("1.0037", "Ocel S235JR", 7.85, 24.9),
    ("11 373", "Ocel 11 373 (ČSN)", 7.85, 23.5),
    ("1.7225", "Ocel 42CrMo4 zušlechtěná", 7.85, 48.0),
    ("1.2379", "Nástrojová ocel X153CrMoV12", 7.70, 210.0),
    ("1.0715", "Automatová ocel 11SMn30", 7.85, 29.0),
    ("EN AW-6082", "Hliník AlSi1MgMn T6", 2.70, 118.0),
    ("EN AW-7075", "Dural AlZn5,5MgCu T651", 2.81, 245.0),
    ("CuZn39Pb3", "Mosaz automatová", 8.47, 235.0),
    ("CuSn8", "Bronz cínový", 8.80, 410.0),
    ("POM-C", "Polyacetal POM-C přírodní", 1.41, 165.0),
    ("PA6", "Polyamid PA6 extrudovaný", 1.14, 140.0),
)

PART_NOUNS: tuple[str, ...] = (
    "Hřídel",
    "Příruba",
    "Pouzdro",
    "Čep",
    "Držák",
    "Víko",
    "Distanční kroužek",
    "Kolo ozubené",
    "Těleso ventilu",
    "Deska upínací",
    "Matice speciální",
    "Šroub lícovaný",
    "Podložka",
    "Vačka",
    "Kladka",
    "Unašeč",
    "Rameno",
    "Konzola",
    "Vložka",
    "Spojka",
    "Trubka",
    "Objímka",
    "Hřeben",
    "Kryt ložiska",
)
PART_SUFFIXES: tuple[str, ...] = (
    "ø20x120",
    "ø25x180",
    "ø40x60",
    "DN50",
    "DN80 PN16",
    "M12",
    "M16x1,5",
    "z=32 m=2",
    "levý",
    "pravý",
    "kalený",
    "broušený",
    "s drážkou",
    "zkrácený",
    "typ B",
    "typ C",
    "300x200x20",
    "pro lis CKW 250",
    "náhradní díl",
    "",
)
NOTES: tuple[str, ...] = (
    "Dodat s atestem 3.1",
    "Kalit na 55 HRC",
    "Hrany sražené 0,5x45°",
    "Zinkovat galvanicky",
    "Eloxovat přírodně",
    "Rozměry dle výkresu zákazníka",
    "Pozor: tolerance h6",
    "Balit po 10 ks",
    "Nitridovat",
    "Tryskat, pasivovat",
)
CUSTOMERS: tuple[str, ...] = (
    "Strojírny Třebíč a.s.",
    "ŽĎAS, a.s.",
    "TOS Kuřim – OS, a.s.",
    "Škoda Auto a.s.",
    "Hydraulika Brno s.r.o.",
    "Kovovýroba Novák s.r.o.",
    "Přesné obrábění Zlín s.r.o.",
    "Vítkovice Machinery a.s.",
    "Šmeral Brno a.s.",
    "Jihostroj a.s.",
    "Zetor Tractors a.s.",
    "Bohemia Hydraulik s.r.o.",
    "Železárny Třinec – servis s.r.o.",
    "Moravské kovárny a.s.",
    "Agrostroj Pelhřimov a.s.",
    "Čepro strojírenská s.r.o.",
    "Elektrárny Dukovany – údržba",
    "Tatra Trucks a.s.",
)
QUOTE_STATUSES: tuple[str, ...] = ("draft", "sent", "accepted", "rejected", "expired")
MACHINES: tuple[str, ...] = (
    "DMG MORI NLX 2500",
    "Mazak QTN 200",
    "Haas VF-2",
    "Hermle C 32",
    "TOS SUI 50",
    "Okuma LB3000",
    "Fanuc Robodrill",
    "Kellenberger 100",
)
DISCOUNTS: tuple[float, ...] = (2.5, 3.0, 5.0, 7.5, 10.0, 12.5, 15.0)

TS_FORMAT = "%Y-%m-%d %H:%M:%S"


def ts(moment: datetime) -> str:
    """The app's timestamp text: ISO-8601 with a space, whole seconds."""
    return moment.strftime(TS_FORMAT)


def at(base: datetime, seconds: int) -> str:
    return ts(base + timedelta(seconds=seconds))


class Clock:
    """``at(base, seconds)`` for one ``base``, without a datetime per call.

    A world has tens of millions of timestamps; ``datetime + timedelta`` then ``strftime``
    costs microseconds each. The date part is formatted once per day and cached (a few hundred
    days), the time of day is integer arithmetic — the same text for whole ``seconds`` (naive
    datetimes have no DST, so every day is 86,400 s).
    """

    def __init__(self, base: datetime):
        if base.microsecond:
            raise ValueError("Clock needs a base of whole seconds")
        self.midnight = base.replace(hour=0, minute=0, second=0)
        self.offset = base.hour * 3600 + base.minute * 60 + base.second
        self.days: dict[int, str] = {}

    def at(self, seconds: int) -> str:
        """``ts(base + timedelta(seconds=seconds))`` for an integer ``seconds``."""
        day, rem = divmod(self.offset + seconds, 86_400)
        prefix = self.days.get(day)
        if prefix is None:
            prefix = self.days[day] = (self.midnight + timedelta(days=day)).strftime("%Y-%m-%d ")
        hours, rem = divmod(rem, 3600)
        minutes, secs = divmod(rem, 60)
        return f"{prefix}{hours:02d}:{minutes:02d}:{secs:02d}"


def part_number(part_id: int) -> str:
    return f"GS-{10000 + part_id}"


def quote_number(year: int, quote_id: int) -> str:
    return f"Q-{year}-{quote_id:04d}"


def pdf_bytes(title: str, lines: tuple[str, ...] = ()) -> bytes:
    """A minimal, valid one-page PDF showing ``title`` and ``lines`` (ASCII only).

    Offsets in the xref table are computed, so readers accept it; no dates, no ids, so
    the bytes depend only on the text.
    """

    def esc(text: str) -> str:
        ascii_text = text.encode("ascii", "replace").decode("ascii")
        return ascii_text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    ops = ["BT", "/F1 16 Tf", "50 780 Td", f"({esc(title)}) Tj", "/F1 10 Tf"]
    for line in lines:
        ops += ["0 -16 Td", f"({esc(line)}) Tj"]
    ops.append("ET")
    stream = "\n".join(ops).encode("ascii")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        (
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
            b"/Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>"
        ),
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
