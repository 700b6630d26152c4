"""The multilingual probe set the parity gate runs: real sentences in many scripts, batched in
shapes the export example never had (batch 1, odd sizes, heavy padding, a one-token row beside a
row longer than 128 tokens, so T5's relative-position buckets beyond ``max_distance`` are used).

Written for this project; translations of one sentence share a position in ``PAIRS`` so a trained
model has meaningful nearest neighbours for the retrieval-agreement check.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mst5_dist.model.batching import tokenize_truncated

# (language, sentence). Scripts: Latin, Cyrillic, Greek, Arabic, Hebrew, Devanagari, Bengali,
# Tamil, Thai, Georgian, Armenian, Han, Kana, Hangul, Ethiopic.
SENTENCES: list[tuple[str, str]] = [
    ("en", "The train to the airport leaves every twenty minutes."),
    ("de", "Der Zug zum Flughafen fährt alle zwanzig Minuten."),
    ("fr", "Le train pour l'aéroport part toutes les vingt minutes."),
    ("es", "El tren al aeropuerto sale cada veinte minutos."),
    ("ru", "Поезд в аэропорт отправляется каждые двадцать минут."),
    ("zh", "去机场的火车每二十分钟发一班。"),
    ("ar", "يغادر القطار إلى المطار كل عشرين دقيقة."),
    ("en", "She planted tomatoes in the garden behind the house."),
    ("de", "Sie pflanzte Tomaten im Garten hinter dem Haus."),
    ("es", "Ella plantó tomates en el jardín detrás de la casa."),
    ("ru", "Она посадила помидоры в саду за домом."),
    ("zh", "她在房子后面的花园里种了西红柿。"),
    ("ar", "زرعت الطماطم في الحديقة خلف المنزل."),
    ("el", "Ο καιρός σήμερα είναι ζεστός και ηλιόλουστος."),
    ("he", "מזג האוויר היום חם ושמשי."),
    ("hi", "आज मौसम गर्म और धूप वाला है।"),
    ("bn", "আজ আবহাওয়া গরম এবং রৌদ্রোজ্জ্বল।"),
    ("ta", "இன்று வானிலை வெப்பமாகவும் வெயிலாகவும் உள்ளது."),
    ("th", "วันนี้อากาศร้อนและมีแดดจัด"),
    ("ka", "დღეს ამინდი ცხელი და მზიანია."),
    ("hy", "Այսօր եղանակը շոգ է և արևոտ։"),
    ("ja", "今日は暑くて晴れています。"),
    ("ko", "오늘은 날씨가 덥고 화창합니다."),
    ("am", "ዛሬ አየሩ ሞቃትና ፀሐያማ ነው።"),
    ("en", "The weather today is hot and sunny."),
    ("en", "A man is playing a guitar on the street."),
    ("de", "Ein Mann spielt auf der Straße Gitarre."),
    ("ru", "Мужчина играет на гитаре на улице."),
    ("zh", "一个男人在街上弹吉他。"),
    ("ar", "رجل يعزف على الجيتار في الشارع."),
    ("en", "Nobody is playing any instrument."),
    ("es", "Los niños duermen."),
    ("en", "Yes."),
    ("zh", "好"),
    ("ar", "نعم"),
    ("ru", "Нет"),
    ("en", "Prices rose by 3.5% in March, according to the bank's report (p. 14)."),
    ("de", "Laut Bericht der Bank stiegen die Preise im März um 3,5 % (S. 14)."),
    ("vi", "Giá cả đã tăng 3,5% vào tháng Ba, theo báo cáo của ngân hàng."),
    ("tr", "Bankanın raporuna göre fiyatlar mart ayında %3,5 arttı."),
    ("pl", "Według raportu banku ceny wzrosły w marcu o 3,5%."),
    ("sw", "Bei zilipanda kwa asilimia 3.5 mwezi Machi, kwa mujibu wa ripoti ya benki."),
    ("id", "Harga naik 3,5% pada bulan Maret menurut laporan bank."),
    ("uk", "За звітом банку, ціни в березні зросли на 3,5%."),
]

# Long paragraphs: well beyond 128 tokens under any sub-word vocabulary.
LONG_TEXTS: list[tuple[str, str]] = [
    (
        "en",
        "The committee met on Tuesday morning to review the proposal for the new railway line, which "
        "would connect the northern villages with the regional hospital, the university and the port. "
        "Several members argued that the cost estimates were too optimistic, because the route crosses two "
        "rivers and a protected forest, and the engineers had not yet finished their survey of the soil. "
        "Others pointed out that the bus service is slow, that many older residents cannot drive, and that "
        "every year of delay makes the project more expensive. After a long discussion, the committee "
        "decided to ask for an independent review, to publish all documents online, and to hold public "
        "meetings in each village before the final vote in the autumn.",
    ),
    (
        "de",
        "Am Dienstagmorgen traf sich der Ausschuss, um den Vorschlag für die neue Bahnstrecke zu prüfen, "
        "die die nördlichen Dörfer mit dem Kreiskrankenhaus, der Universität und dem Hafen verbinden soll. "
        "Mehrere Mitglieder hielten die Kostenschätzungen für zu optimistisch, weil die Strecke zwei Flüsse "
        "und einen geschützten Wald quert. Andere wiesen darauf hin, dass der Busverkehr langsam ist und "
        "viele ältere Menschen nicht Auto fahren können. Nach langer Diskussion beschloss der Ausschuss, "
        "ein unabhängiges Gutachten einzuholen und vor der Abstimmung im Herbst öffentliche Versammlungen "
        "in jedem Dorf abzuhalten. Жители деревень ждут решения; 村民们在等待决定；ينتظر السكان القرار.",
    ),
    (
        "mixed",
        "委员会周二上午开会，审议修建新铁路线的提案，这条线路将把北部村庄与地区医院、大学和港口连接起来。"
        "几位委员认为成本估算过于乐观，因为线路要跨越两条河流和一片保护林。另一些人指出，公交服务很慢，"
        "许多老年居民不会开车。Комитет решил заказать независимую экспертизу и провести общественные "
        "слушания в каждой деревне перед окончательным голосованием осенью. قررت اللجنة طلب مراجعة مستقلة "
        "ونشر جميع الوثائق على الإنترنت وعقد اجتماعات عامة في كل قرية قبل التصويت النهائي في الخريف.",
    ),
]

MAX_PROBE_TOKENS = 320  # > 128 (T5 max_distance) and below BERT's 512 positions


@dataclass
class ProbeBatch:
    input_ids: np.ndarray  # int64 (batch, seq)
    attention_mask: np.ndarray  # int64 (batch, seq)
    rows: list[int]  # index into the probe item list for each row
    label: str


@dataclass
class Probe:
    batches: list[ProbeBatch]
    n_items: int
    retrieval: list[int]  # items ranked against each other for the top-1 agreement check

    @property
    def longest(self) -> int:
        return max(b.input_ids.shape[1] for b in self.batches)


def build_probe(tokenizer, *, max_tokens: int = MAX_PROBE_TOKENS) -> Probe:
    batches, n_items = build_probe_batches(tokenizer, max_tokens=max_tokens)
    return Probe(batches, n_items, retrieval_items(tokenizer, max_tokens=max_tokens))


def probe_texts() -> list[str]:
    return [t for _, t in SENTENCES] + [t for _, t in LONG_TEXTS]


def build_probe_batches(tokenizer, *, max_tokens: int = MAX_PROBE_TOKENS) -> tuple[list[ProbeBatch], int]:
    """Tokenise the probe set (no truncation below ``max_tokens``) and group it into batches of
    sizes 1, 2, 3, 5, 8, 17, ... plus two special batches; returns (batches, number of items).

    Item ids: one per probe text, then synthetic one-token items (the first token of a sentence).
    """
    texts = probe_texts()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = tokenize_truncated(tokenizer, texts, max_tokens)["input_ids"]
    items = [list(x) for x in ids]
    one_token = [[items[i][0]] for i in (0, 5, 32)]  # one-token rows: English, Chinese, "Yes."
    first_single = len(items)
    items += one_token

    def make(rows: list[int], label: str) -> ProbeBatch:
        seq = max(len(items[r]) for r in rows)
        input_ids = np.full((len(rows), seq), pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), seq), dtype=np.int64)
        for j, r in enumerate(rows):
            input_ids[j, : len(items[r])] = items[r]
            mask[j, : len(items[r])] = 1
        return ProbeBatch(input_ids, mask, rows, label)

    rng = np.random.default_rng(1234)
    order = [int(i) for i in rng.permutation(len(texts))]
    batches: list[ProbeBatch] = []
    start = 0
    for size in (1, 2, 3, 5, 8, 17, 64):
        rows = order[start : start + size]
        if not rows:
            break
        batches.append(make(rows, f"mixed batch of {len(rows)}"))
        start += size
    long_rows = list(range(len(SENTENCES), len(texts)))
    batches.append(make([long_rows[0]], "batch 1, longest text"))
    # A row that is padding everywhere but one token, beside a row longer than 128 tokens.
    batches.append(make([long_rows[2], first_single, first_single + 1], "one-token rows beside a long row"))
    batches.append(make([first_single + 2], "batch 1, one token"))
    return batches, len(items)


def retrieval_items(tokenizer, *, max_tokens: int = MAX_PROBE_TOKENS) -> list[int]:
    """Probe items used for the retrieval check: distinct token sequences that are mostly not
    ``<unk>``. A small tokenizer maps whole scripts to ``<unk>``, which makes sentences identical
    (exact ties no runtime can be expected to break the same way) rather than hard to rank."""
    unk = tokenizer.unk_token_id
    seen: set[tuple[int, ...]] = set()
    keep = []
    for i, row in enumerate(tokenize_truncated(tokenizer, probe_texts(), max_tokens)["input_ids"]):
        ids = tuple(row)
        if ids in seen or (unk is not None and sum(t == unk for t in ids) > len(ids) / 2):
            continue
        seen.add(ids)
        keep.append(i)
    return keep
