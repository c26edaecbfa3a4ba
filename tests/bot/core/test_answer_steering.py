"""What agents and customers steer about served answers (issue 14, items 4 and 5): a
thumbs-down or an agent's "Bad" demotes that answer for that kind of question, and a best
answer too close to a different runner-up is not served (`retrieval.min_margin`).

The real service on the in-memory fakes (`in_memory_core` of test_service.py).
"""

from __future__ import annotations

import asyncio

import pytest

from bot.core.demotion import Demotion, RatedAnswers, demotions, without_demoted
from bot.core.records import Answer, AnswerRating, Feedback, Route
from bot.core.service import HandleResult
from tests.bot.core.test_service import CHANNEL, InMemoryCore, in_memory_core

QUESTION = "where is my refund"
PERSONAL = "I checked BC-206315: the refund went out yesterday."
GENERAL = "Refunds reach your card within 5 working days."


def _index_two_answers(core: InMemoryCore) -> None:
    core.answers.add(PERSONAL, 0.9, question=QUESTION, source="logs.jsonl:12")
    core.answers.add(GENERAL, 0.8, question=QUESTION, source="faq.csv:3")


async def _thumbs_down(core: InMemoryCore, result: HandleResult, sender: str = "ada") -> None:
    (reply,) = result.replies
    await core.service.record_customer_feedback(
        CHANNEL, sender, Feedback(reply.message_id, rating="down")
    )


async def test_a_customers_thumbs_down_makes_the_next_customer_get_the_next_answer() -> None:
    async with in_memory_core() as core:
        _index_two_answers(core)
        first = await core.say(QUESTION, intent="refund_status")
        assert first.replies[0].text == PERSONAL
        await _thumbs_down(core, first)

        again = await core.say(QUESTION, sender="bob", intent="refund_status")
        (reply,) = again.replies
        assert (reply.route, reply.text) == (Route.ANSWER, GENERAL)
        # The search asked for more answers than usual to make up for the skipped ones: one
        # per demotion (the answer's source and its text each skip at most one result).
        assert core.answers.searches[-1][1] == 3 + 2
        asked, _ = await core.transcript("bob")
        assert asked.details["source"] == "faq.csv:3"
        assert asked.details["demoted"] == ["logs.jsonl:12"]


async def test_an_agents_bad_demotes_the_answer_and_a_later_good_brings_it_back() -> None:
    async with in_memory_core() as core:
        _index_two_answers(core)
        first = await core.say(QUESTION, intent="refund_status")
        sam = core.agent("sam")
        await core.desk.label_message(first.replies[0].message_id, sam, rating="bad")
        demoted = await core.say(QUESTION, sender="bob", intent="refund_status")
        assert demoted.replies[0].text == GENERAL

        await core.desk.label_message(first.replies[0].message_id, sam, rating="good")
        back = await core.say(QUESTION, sender="cy", intent="refund_status")
        assert back.replies[0].text == PERSONAL


async def test_a_demotion_holds_for_its_intent_and_for_unsure_questions_not_for_others() -> None:
    async with in_memory_core() as core:
        _index_two_answers(core)
        await _thumbs_down(core, await core.say(QUESTION, intent="refund_status"))
        other = await core.say(QUESTION, sender="bob", intent="billing")
        assert other.replies[0].text == PERSONAL  # rated down for another kind of question
        unsure = await core.say(QUESTION, sender="cy", intent=None, top="billing")
        assert unsure.replies[0].text == GENERAL  # nothing says this one differs


async def test_with_every_answer_demoted_the_bot_asks_to_rephrase() -> None:
    async with in_memory_core() as core:
        core.answers.add(PERSONAL, 0.9, question=QUESTION, source="logs.jsonl:12")
        await _thumbs_down(core, await core.say(QUESTION, intent="refund_status"))
        result = await core.say(QUESTION, sender="bob", intent="refund_status")
        (reply,) = result.replies
        assert reply.route == Route.REPHRASE
        asked, _ = await core.transcript("bob")
        assert asked.details["demoted"] == ["logs.jsonl:12"]


async def test_a_demotion_outlives_the_service_that_recorded_it() -> None:
    """The demotion is read from the store on every answer, so another replica (or the
    restarted process) on the same store skips the answer too."""
    async with in_memory_core() as core:
        _index_two_answers(core)
        await _thumbs_down(core, await core.say(QUESTION, intent="refund_status"))
        async with in_memory_core() as replica:
            _index_two_answers(replica)
            replica.store.tables = core.store.tables  # the shared database
            result = await replica.say(QUESTION, sender="bob", intent="refund_status")
            assert result.replies[0].text == GENERAL


async def test_a_rating_on_a_handler_reply_demotes_nothing() -> None:
    async with in_memory_core() as core:
        handled = await core.say("where is BC-104522", intent="order_status")
        await _thumbs_down(core, handled)
        assert await core.store.answer_ratings() == []


def test_the_latest_rating_per_answer_and_intent_decides() -> None:
    def rating(source: str, text: str, intent: str | None, value: str) -> AnswerRating:
        return AnswerRating(source, text, intent, value)

    found = demotions(
        [
            rating("a:1", "Refunds take 5 days.", "refund", "down"),
            rating("a:1", "Refunds take 5 days.", "refund", "up"),  # lifted again
            rating("b:2", "Your order {order_id} shipped", "shipping", "down"),
        ]
    )
    assert set(found) == {
        Demotion("b:2", None, "shipping"),
        Demotion(None, "your order {order_id} shipped", "shipping"),
    }
    # The same text indexed under another question (another source) is the same reply.
    same_text = Answer("YOUR ORDER  {order_id} shipped", 0.9, "c:7", "q")
    other = Answer("Shipping is free.", 0.8, "d:1", "q")
    assert without_demoted([same_text, other], found, "shipping") == ([other], [same_text])
    assert without_demoted([same_text, other], found, "refund") == ([same_text, other], [])


# -- the margin over the runner-up (`retrieval.min_margin`) -------------------------------


async def test_a_best_answer_too_close_to_a_different_runner_up_is_not_served() -> None:
    async with in_memory_core(min_margin=0.05) as core:
        core.answers.add(PERSONAL, 0.82, question=QUESTION, source="logs.jsonl:12")
        core.answers.add(GENERAL, 0.80, question=QUESTION, source="faq.csv:3")
        result = await core.say(QUESTION, intent="refund_status")
        (reply,) = result.replies
        assert reply.route == Route.REPHRASE
        asked, _ = await core.transcript()
        assert asked.details["margin"] == 0.02 and asked.details["best_score"] == 0.82
        assert (await core.conversation()).failed_turns == 1


async def test_a_clear_margin_or_a_lone_answer_is_served_and_its_margin_recorded() -> None:
    async with in_memory_core(min_margin=0.05) as core:
        core.answers.add(PERSONAL, 0.9, question=QUESTION, source="logs.jsonl:12")
        core.answers.add(GENERAL, 0.8, question=QUESTION, source="faq.csv:3")
        core.answers.add("Shipping is free.", 0.7, question="shipping cost", source="faq.csv:9")
        clear = await core.say(QUESTION, intent="refund_status")
        assert clear.replies[0].text == PERSONAL
        asked, _ = await core.transcript()
        assert asked.details["margin"] == 0.1
        lone = await core.say("shipping cost", sender="bob", intent="shipping")
        assert lone.replies[0].text == "Shipping is free."
        asked, _ = await core.transcript("bob")
        assert "margin" not in asked.details


async def test_by_default_a_close_runner_up_does_not_stop_the_best_answer() -> None:
    async with in_memory_core() as core:
        core.answers.add(PERSONAL, 0.81, question=QUESTION, source="logs.jsonl:12")
        core.answers.add(GENERAL, 0.80, question=QUESTION, source="faq.csv:3")
        result = await core.say(QUESTION, intent="refund_status")
        assert (result.replies[0].route, result.replies[0].text) == (Route.ANSWER, PERSONAL)


async def test_ratings_are_read_incrementally_with_a_full_read_now_and_then() -> None:
    """Choosing an answer reads only the ratings given since the last read; a full read
    every `full_read_s` forgets deleted ratings (an erasure) and catches late commits."""
    stored = [
        AnswerRating("a:1", "Refunds take 5 days.", "refund", "down", 1),
        AnswerRating("b:2", "It shipped.", "shipping", "down", 2),
    ]
    asked: list[int] = []

    async def ratings(after: int) -> list[AnswerRating]:
        asked.append(after)
        return [r for r in stored if r.feedback_id > after]

    clock = [0.0]
    state = RatedAnswers(full_read_s=60, poll_s=0, now=lambda: clock[0])
    assert {d.source for d in await state.read(ratings) if d.source} == {"a:1", "b:2"}
    stored.append(AnswerRating("a:1", "Refunds take 5 days.", "refund", "up", 3))
    clock[0] = 30.0
    assert {d.source for d in await state.read(ratings) if d.source} == {"b:2"}
    assert await state.read(ratings) == state.current  # nothing new: same demotions
    assert asked == [0, 2, 3]
    # A rating that committed late (id 2 after 3 was read) is missed until the full read;
    # so is a deleted one remembered.
    del stored[1]
    clock[0] = 61.0
    assert {d.source for d in await state.read(ratings) if d.source} == set()
    assert asked[-1] == 0


async def test_ratings_are_polled_at_most_every_poll_s_unless_touched() -> None:
    """Under load the ratings are not read per message: at most every `poll_s`, at once
    after a rating recorded in this process (`touch`), and concurrent reads share a query."""
    stored = [AnswerRating("a:1", "Refunds take 5 days.", "refund", "down", 1)]
    asked: list[int] = []
    gate = asyncio.Event()

    async def ratings(after: int) -> list[AnswerRating]:
        asked.append(after)
        await gate.wait()
        return [r for r in stored if r.feedback_id > after]

    clock = [0.0]
    state = RatedAnswers(full_read_s=60, poll_s=1.0, now=lambda: clock[0])
    gate.set()
    assert {d.source for d in await state.read(ratings) if d.source} == {"a:1"}
    stored.append(AnswerRating("b:2", "It shipped.", "shipping", "down", 2))
    clock[0] = 0.5
    assert {d.source for d in await state.read(ratings) if d.source} == {"a:1"}  # polled 0.5 s ago
    assert asked == [0]
    state.touch()  # a rating recorded on this replica holds from the next message
    assert {d.source for d in await state.read(ratings) if d.source} == {"a:1", "b:2"}
    assert asked == [0, 1]
    stored.append(AnswerRating("b:2", "It shipped.", "shipping", "up", 3))
    clock[0] = 1.6  # another replica's rating: seen within poll_s
    gate.clear()
    reads = [asyncio.create_task(state.read(ratings)) for _ in range(5)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*reads)
    assert asked == [0, 1, 2]  # five concurrent reads, one query
    assert all({d.source for d in r if d.source} == {"a:1"} for r in results)


async def test_a_failed_ratings_read_is_retried_on_the_next_message() -> None:
    calls: list[int] = []

    async def ratings(after: int) -> list[AnswerRating]:
        calls.append(after)
        if len(calls) == 1:
            raise ConnectionError("database away")
        return [AnswerRating("a:1", "Refunds take 5 days.", "refund", "down", 1)]

    state = RatedAnswers(poll_s=60, now=lambda: 0.0)
    with pytest.raises(ConnectionError):
        await state.read(ratings)
    assert {d.source for d in await state.read(ratings) if d.source} == {"a:1"}
    assert len(calls) == 2


def test_a_rating_seen_twice_counts_once() -> None:
    state = RatedAnswers()
    down = AnswerRating("a:1", "Refunds take 5 days.", "refund", "down", 4)
    up = AnswerRating("a:1", "Refunds take 5 days.", "refund", "up", 5)
    state.apply([down, up])
    state.apply([down])  # a concurrent read returned it again: not a newer "down"
    assert state.current == ()
