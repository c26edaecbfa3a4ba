"""Answer curation (bot/retrieval/curation.py) when pairs are read for the index: another
customer's details become placeholders or keep the answer out, the shop's own facts stay,
FAQ and approved answers are trusted; on the sample shop's real logs and on small cases."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from bot.core.router import RoutingConfig
from bot.retrieval.curation import (
    FIRST_PERSON_ACTION,
    OFFER,
    ORDER_STATE,
    SIGNATURE,
    AnswerCurator,
    Candidate,
    CurationReport,
)
from bot.retrieval.sources import AnswerPair, PairReport, build_answer_pairs

DATA = Path(__file__).resolve().parents[3] / "data"
SHOP = RoutingConfig.load().entities
ORDER_NUMBER = re.compile(r"\bBC[\s-]?\d{6}\b|#\d{6}\b", re.IGNORECASE)


def chat(question: str, answer: str) -> AnswerPair:
    return AnswerPair(question, answer, None, "logs.jsonl:1", "conversation")


def curate(answer: str, question: str = "a question", *said: str) -> tuple[str | None, tuple]:
    """(curated answer or None, reasons) for one conversation's answer."""
    verdict = AnswerCurator(SHOP).curate(Candidate(chat(question, answer), (question, *said)))
    return (verdict.pair.answer if verdict.pair else None), verdict.reasons


def test_the_sample_logs_keep_no_order_number_and_no_agent_action() -> None:
    report = PairReport()
    pairs = build_answer_pairs(
        [DATA / "conversations.jsonl", DATA / "faq.csv"], report, entities=SHOP
    )
    served = [p for p in pairs if p.kind == "conversation"]
    assert not [p.answer for p in served if ORDER_NUMBER.search(p.answer)]
    assert not [p.question for p in served if ORDER_NUMBER.search(p.question)]
    assert not [p.answer for p in served if re.search(r"\bI checked|\bI've ", p.answer)]
    # The example: "I checked BC-206315: one charge is ..." is not an answer any more.
    assert not [p for p in pairs if "one charge is the actual payment" in p.answer]
    templated = [p for p in served if "order_id" in p.slots]
    assert templated and all("{order_id}" in p.answer for p in templated)
    curation = report.curation
    assert curation.templated == len([p for p in served if p.slots])
    assert curation.excluded >= 60 and curation.reasons[FIRST_PERSON_ACTION] >= 50
    assert curation.trusted == report.read["faq"]


def test_the_sample_logs_serve_no_customers_name(tmp_path: Path) -> None:
    records = [json.loads(line) for line in (DATA / "conversations.jsonl").open()]
    jonas = next(r for r in records if any("Hi Jonas," in m["text"] for m in r["messages"]))
    logs = tmp_path / "logs.jsonl"
    logs.write_text(json.dumps(jonas) + "\n")
    (pair,) = build_answer_pairs([logs], entities=SHOP)
    assert pair.answer.startswith("Hi {name}, I'm really sorry the teapot arrived broken.")
    assert "Jonas" not in pair.answer and pair.slots == ("name",)


def test_an_order_number_becomes_a_slot_in_the_answer_and_the_question() -> None:
    verdict = AnswerCurator(SHOP).curate(
        Candidate(
            chat(
                "The rug and the cover of BC-204719 come with different carriers?",
                "That's not a mistake: bulky items go with DHL, so BC-204719 arrives in two "
                "parcels with two tracking links.",
            )
        )
    )
    assert verdict.pair is not None and verdict.templated
    assert verdict.pair.answer == (
        "That's not a mistake: bulky items go with DHL, so {order_id} arrives in two parcels "
        "with two tracking links."
    )
    assert (
        verdict.pair.question == "The rug and the cover of {order_id} come with different carriers?"
    )
    assert verdict.pair.slots == ("order_id",)


@pytest.mark.parametrize(
    "answer",
    [
        "I checked BC-206315: one charge is the actual payment.",
        "I've refunded the express fee.",
        "I have opened an investigation with ParcelPro.",
        "Done, I've cancelled it and the money goes back to your card.",
        "We've issued a new label.",
        "I'll send you a new label today.",
        "I can see your parcel is at the depot.",
        "I'm transferring you now.",
        "If it is lost, we'll reship it.",
        "I've already pulled up your photos.",
    ],
)
def test_first_person_actions_keep_an_answer_out(answer: str) -> None:
    assert curate(answer) == (None, (FIRST_PERSON_ACTION,))


def test_offers_to_act_and_reports_of_one_orders_state_keep_an_answer_out() -> None:
    assert curate("Would you like me to change the address?")[1] == (OFFER,)
    assert curate("BC-204719 shipped yesterday with ParcelPro.")[1] == (ORDER_STATE,)
    assert curate("Your refund has been issued and arrives in 5 days.")[1] == (ORDER_STATE,)


@pytest.mark.parametrize(
    "answer",
    ["Returns are free. - Ana", "Returns are free.\nBest, Ana", "Returns are free. ^AB"],
)
def test_an_agents_signature_keeps_an_answer_out(answer: str) -> None:
    assert curate(answer) == (None, (SIGNATURE,))


def test_policy_in_the_first_person_plural_stays() -> None:
    assert curate("We refund to your card and we ship within a day.")[1] == ()


def test_personal_data_keeps_an_answer_out() -> None:
    assert curate("Your card 4111 1111 1111 1111 was declined.")[1] == ("card number",)
    assert curate("We refund to DE89 3704 0044 0532 0130 00.")[1] == ("IBAN",)
    assert curate("We emailed ada@example.com the label.")[1] == ("email address",)
    assert curate("Want me to send it to 80331 instead?", "zip is 80331")[1] == (
        OFFER,
        "number from the customer's message",
    )
    assert curate("BC-100001 and BC-100002 are both late.")[1] == ("several order_id values",)


def test_a_price_stays_unless_it_repeats_the_customers() -> None:
    assert curate("Express costs EUR 9.95.") == ("Express costs EUR 9.95.", ())
    assert curate("Yes, 23,40 € is the full price.", "is 23,40 € right?")[1] == ("money amount",)


def test_a_contact_named_by_many_conversations_is_the_shops() -> None:
    hotline = "Call us at +49 30 1234 5678."
    candidates = [Candidate(chat(f"question {i}", hotline)) for i in range(3)]
    candidates.append(Candidate(chat("call me", "Our other number is +49 30 9876 5432.")))
    report = CurationReport()
    pairs = AnswerCurator(SHOP).curate_all(candidates, report)
    assert [p.answer if p else None for p in pairs] == [hotline, hotline, hotline, None]
    assert (report.kept, report.excluded, dict(report.reasons)) == (3, 1, {"phone number": 1})


def test_names_greeted_or_signed_become_the_name_slot() -> None:
    answer, reasons = curate(
        "Dear Mr Hale, Amex is accepted.",
        "My Amex fails.\nRegards,\nRichard Hale",
    )
    assert (answer, reasons) == ("Dear {name}, Amex is accepted.", ())
    verdict = AnswerCurator(SHOP).curate(
        Candidate(chat("Can I pay later?\nBest, Ingrid", "Hi Ingrid, yes, with Klarna."))
    )
    assert verdict.pair is not None
    assert verdict.pair.answer == "Hi {name}, yes, with Klarna."
    assert verdict.pair.question == "Can I pay later?\nBest, {name}"
    assert curate("Hi there, returns are free.") == ("Hi there, returns are free.", ())


def test_faq_and_approved_answers_are_trusted_with_their_placeholders() -> None:
    curator = AnswerCurator(SHOP)
    for kind in ("faq", "approved"):
        pair = AnswerPair("q", "I've checked {order_id} for you, {name}.", None, "f:1", kind)
        verdict = curator.curate(Candidate(pair))
        assert verdict.pair is not None and verdict.reasons == ()
        assert verdict.pair.answer == pair.answer
        assert verdict.pair.slots == ("order_id", "name")


def test_the_report_lists_counts_reasons_and_the_most_frequent_excluded_answers() -> None:
    report = CurationReport()
    same = "I checked it for you."
    candidates = [
        Candidate(chat("q1", same)),
        Candidate(chat("q2", same)),
        Candidate(chat("q3", "Orders ship within 1 business day.")),
        Candidate(chat("q4", "BC-204719 is in stock. - Ana")),
        Candidate(AnswerPair("q5", "FAQ answer.", None, "faq.csv:2", "faq")),
        Candidate(chat("my Tova set broke", "Sorry about the Tova set! Send a photo.")),
    ]
    AnswerCurator(SHOP).curate_all(candidates, report)
    lines = report.lines()
    assert lines[0] == (
        "curation: 6 answers: 2 kept as written, 0 templated ({order_id}-style placeholders), "
        "1 trusted (FAQ and approved), 3 excluded"
    )
    assert lines[1] == (
        "1 kept answer repeats what its customer wrote about (tova): served only to a "
        "question naming it too"
    )
    assert lines[2].startswith("excluded by reason (an answer may have several): ")
    assert "first-person action 2" in lines[2] and "agent signature 1" in lines[2]
    assert lines[4] == "  2x [first-person action] I checked it for you."
    assert report.to_dict()["conditional"] == 1


def test_build_answer_pairs_reports_the_curation(tmp_path: Path) -> None:
    logs = tmp_path / "logs.jsonl"
    records = [
        {
            "resolved": True,
            "messages": [
                {"role": "customer", "text": "can I still change BC-204719 please"},
                {"role": "agent", "text": "Yes: open {x} in My orders. BC-204719 too."},
            ],
        },
        {
            "resolved": True,
            "messages": [
                {"role": "customer", "text": "where is my refund for the kettle"},
                {"role": "agent", "text": "I've refunded it, Ana"},
            ],
        },
    ]
    logs.write_text("".join(json.dumps(r) + "\n" for r in records))
    report = PairReport()
    (pair,) = build_answer_pairs([logs], report, entities=SHOP)
    assert pair.answer == "Yes: open {x} in My orders. {order_id} too."
    assert pair.slots == ("order_id",)  # {x} is no slot: it is left as written
    assert (report.curation.templated, report.curation.excluded) == (1, 1)
    assert any(line.startswith("curation: 2 answers") for line in report.lines())


def test_an_answer_repeating_what_its_customer_asked_about_names_it_as_an_echo() -> None:
    """ "We can't ship to Switzerland" answered "do u ship to switzerland?": said to someone
    asking about Norway it is wrong, so the pair records the word and is served only to a
    question naming it (bot/retrieval/index.py). Words many conversations' answers name
    (the shop's payment methods), words opening a sentence and greeted names are not."""
    swiss = "Sorry, we deliver within the EU only: not to Switzerland, but to Austria."
    paypal = "Yes, PayPal is accepted."
    candidates = [Candidate(chat("do u ship to switzerland? or austria", swiss))]
    candidates += [Candidate(chat(f"paypal ok? ({i})", paypal)) for i in range(3)]
    candidates.append(Candidate(chat("is klarna ok?", "Klarna is accepted.")))
    candidates.append(Candidate(chat("hi, this is Jonas. Parcel broken", "Hi Jonas, sorry!")))
    pairs = AnswerCurator(SHOP).curate_all(candidates)
    assert [p.echoes if p else None for p in pairs] == [
        ("austria", "switzerland"),
        (),  # PayPal: three conversations' answers name it, so it is the shop's
        (),
        (),
        (),  # "Klarna" opens its sentence: in 6 conversations, only capitals tell a name
        (),  # the greeted name became {name}
    ]
    assert pairs[0] is not None and pairs[0].answer == swiss  # served as written, when named
    assert AnswerPair.from_dict(pairs[0].to_dict()) == pairs[0]
    assert "echoes" not in chat("q", "a").to_dict()  # older indexes keep their fingerprint


def test_in_logs_of_30_conversations_lowercase_words_their_customer_wrote_are_echoes_too() -> None:
    """ "I'm so sorry the teapot arrived broken" said to someone whose mug broke is wrong too.
    With enough conversations to tell one customer's words from everyone's, an answer's
    lower-case words its customer wrote count as well; not function words ("the", "please")
    and not what three or more conversations' customers or answers name ("arrived")."""
    teapot = "I'm so sorry the teapot arrived broken! Please send us a photo of it."
    candidates = [
        Candidate(chat("my glass teapot arrived in pieces", teapot)),
        Candidate(chat("is klarna ok?", "Klarna is accepted.")),
        *(
            Candidate(chat(f"the {thing} arrived broken", "Please send us a photo."))
            for thing in ("lamp", "vase")
        ),
    ]
    filler = [Candidate(chat(f"where is order {i}?", "Orders ship in a day.")) for i in range(26)]
    pairs = AnswerCurator(SHOP).curate_all([*candidates, *filler])
    assert [p.echoes if p else None for p in pairs[:4]] == [
        ("teapot",),
        ("klarna",),  # capitalised or not, it is what the customer asked about
        (),  # "photo" and "please": not what "the lamp arrived broken" said
        (),
    ]
    assert not any(p and p.echoes for p in pairs[4:])  # "orders": 26 conversations name it
    fewer = AnswerCurator(SHOP).curate_all([*candidates, *filler[1:]])  # 29 conversations
    assert [p.echoes if p else None for p in fewer[:2]] == [(), ()]


def test_the_sample_logs_answer_switzerland_only_to_a_question_about_switzerland() -> None:
    pairs = build_answer_pairs([DATA / "conversations.jsonl"], entities=SHOP)
    swiss = [p for p in pairs if "ship to Switzerland" in p.answer]
    assert swiss and all("switzerland" in p.echoes for p in swiss)
    assert not [p for p in pairs if "paypal" in p.echoes]


@pytest.fixture(scope="module")
def sample_index() -> tuple[Any, Any]:
    """The real sample index (conversations and FAQ, curated) and the bundled encoder."""
    from bot.retrieval.embedder import SentenceEmbedder
    from bot.retrieval.index import EmbeddingAnswerIndex

    embed = SentenceEmbedder()
    pairs = build_answer_pairs([DATA / "conversations.jsonl", DATA / "faq.csv"], entities=SHOP)
    return embed, EmbeddingAnswerIndex.build(pairs, embed=embed)


@pytest.mark.parametrize(
    ("word", "nearest", "others", "instead", "asked"),
    [
        # "do you ship to norway?" lies nearest the logs' Switzerland answer: Norway gets the
        # FAQ's general answer.
        (
            "switzerland",
            "can't ship to Switzerland",
            ("do you ship to norway?", "do u ship to iceland"),
            "We deliver to every EU country",
            "do you ship to switzerland?",
        ),
        # "I'm really sorry the teapot arrived broken" lies nearest other broken items too.
        (
            "teapot",
            "the teapot arrived broken",
            ("my mug arrived broken", "the vase came broken, what now"),
            "Please send us a photo of the item and the box",
            "my teapot arrived broken",
        ),
    ],
)
def test_the_sample_index_serves_an_answer_about_what_its_customer_named_only_when_named(
    sample_index: tuple[Any, Any],
    word: str,
    nearest: str,
    others: tuple[str, ...],
    instead: str,
    asked: str,
) -> None:
    """The real sample index and encoder: the nearest pair, by embedding, repeats what its
    own customer named; only a question naming it too gets it, the others a general answer."""
    embed, index = sample_index
    for text in others:
        (vector,) = embed([text])
        (naming,) = index.search_embedding(vector, k=1, text=f"{text} ({word})")
        assert nearest in naming.text
        (served,) = index.search_embedding(vector, k=1, text=text)
        assert word not in served.text.lower()
        assert instead in served.text
    (vector,) = embed([asked])
    (served,) = index.search_embedding(vector, k=1, text=asked)
    assert nearest in served.text
