# ruff: noqa: RUF001 - text in several scripts is the point
"""Long documents for the chunking tests: the shipped long-retrieval documents, and
generated ones in several scripts, Markdown with code, and awkward text (a word longer
than a chunk, a long URL, text without any spaces)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LONG_DOCS = REPO / "data" / "long_retrieval" / "docs"

SENTENCES = {
    "ja": [
        "東京は日本の首都であり、世界でも有数の大都市です。",
        "春になると、公園の桜が一斉に咲き、多くの人が花見を楽しみます。",
        "新幹線は時速三百キロ近くで走り、大阪まで約二時間半で到着します。",
        "古い町並みを歩くと、木造の家や小さな神社が今も残っています。",
    ],
    "zh": [
        "长江是中国最长的河流，流经多个省份，最后注入东海。",
        "每年春节，很多人都会回到家乡，与家人一起吃团圆饭。",
        "这座城市的地铁网络非常发达，几乎可以到达每一个区。",
    ],
    "ko": [
        "서울은 한국의 수도이며 인구가 천만 명에 가까운 대도시입니다.",
        "가을이 되면 산에 단풍이 들어 많은 사람들이 등산을 즐깁니다.",
    ],
    "ru": [
        "Москва является столицей России и крупнейшим городом страны.",
        "Зимой реки замерзают, и люди катаются на коньках прямо по льду.",
        "Поезд из Москвы во Владивосток идёт почти неделю через всю Сибирь.",
    ],
    "el": [
        "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας και μία από τις αρχαιότερες πόλεις.",
        "Το καλοκαίρι πολλοί επισκέπτες ταξιδεύουν στα νησιά του Αιγαίου.",
    ],
    "ar": [
        "القاهرة هي عاصمة مصر وأكبر مدينة في العالم العربي.",
        "يمر نهر النيل عبر المدينة ويقسمها إلى ضفتين.",
        "في المساء تمتلئ المقاهي بالناس الذين يشربون الشاي ويتحدثون.",
    ],
    "hi": [
        "दिल्ली भारत की राजधानी है और यहाँ कई ऐतिहासिक इमारतें हैं।",
        "मानसून के मौसम में यहाँ बहुत बारिश होती है।",
    ],
    "th": ["กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทยและมีวัดที่สวยงามมากมาย"],
    "de": [
        "Die Straßenbahn fährt alle zehn Minuten über die Brücke zum Hauptbahnhof.",
        "Im Herbst färben sich die Blätter der Buchen im Schwarzwald leuchtend rot.",
    ],
    "emoji": ["Weekend plans 🚲🌧️☕ then the 👩‍👩‍👧‍👦 family lunch, café at noon. ✅"],
}

CODE = '''def cut(units: Units, budget: int, first: int = 0) -> list[tuple[int, int]]:
    """Unit ranges covering the units, each within the budget."""
    cumulative = [0]
    for tokens in units.tokens[first:]:
        cumulative.append(cumulative[-1] + tokens)
    ranges = []
    start = 0
    while start < len(units.tokens) - first:
        ceiling = bisect_right(cumulative, cumulative[start] + budget) - 1
        ranges.append((first + start, first + ceiling))
        start = ceiling
    return ranges
'''


def shipped_documents() -> list[str]:
    return [path.read_text(encoding="utf-8") for path in sorted(LONG_DOCS.glob("*.md"))]


def multilingual_document(paragraphs: int = 60) -> str:
    """Paragraphs cycling through several scripts, numbered so that none repeats."""
    languages = list(SENTENCES)
    out = []
    for number in range(paragraphs):
        language = languages[number % len(languages)]
        sentences = SENTENCES[language]
        picked = [sentences[(number + i) % len(sentences)] for i in range(3)]
        out.append(f"{number}. " + " ".join(picked))
    return "\n\n".join(out)


def markdown_document(sections: int = 12) -> str:
    """Headings, prose, lists and fenced code blocks."""
    out = ["# A long Markdown document\n\nIt has sections, lists and code."]
    prose = [part for part in shipped_documents()[0].split("\n\n") if not part.startswith("#")]
    for number in range(sections):
        out.append(f"## Section {number}: notes on part {number}")
        out.append(prose[(number * 3) % len(prose)])
        out.append(f"- item one of {number}\n- item two of {number}\n- item three of {number}")
        out.append(f"```python\n# block {number}\n{CODE}```")
        out.append(prose[(number * 3 + 1) % len(prose)])
    return "\n\n".join(out)


def awkward_document() -> str:
    """A word far longer than a chunk, a long URL, a run of CJK without spaces."""
    blob = "".join(chr(ord("a") + (i * 7) % 26) for i in range(3000))
    url = "https://example.org/" + "/".join(f"segment{i}" for i in range(150))
    cjk = "".join(SENTENCES["zh"] * 40)
    return f"Before the blob. {blob} After the blob.\n\nA link: {url} ends here.\n\n{cjk}"


def long_documents() -> list[str]:
    return [
        *shipped_documents(),
        multilingual_document(),
        markdown_document(),
        awkward_document(),
    ]
