"""The agent's stored replies (agent/replies.py) in a real store file: the first answer to a request
stays, a repeat is recognised by its bytes, and ``stored`` lists every reply the device sent."""

from __future__ import annotations

from fedge.agent.replies import Replies, Reply
from fedge.agent.store import Store


def test_stored_replies_keep_the_first_answer_and_list_what_was_sent(tmp_path):
    path = tmp_path / "agent.db"
    with Store(path) as store:
        replies = Replies(store.db)
        replies.put(2, "round.task", b"task-2", [Reply("secagg.advertise_keys", b"\x00\x01")])
        replies.put(1, "round.task", b"task-1", [Reply("round.plain_update", b"u1"), Reply("round.decline", b"d")])
        replies.put(1, "round.task", b"task-1 again", [Reply("round.plain_update", b"other")])  # first stays
        answered = replies.get(1, "round.task")
        assert answered is not None and answered.matches(b"task-1") and not answered.matches(b"task-1 again")
        assert replies.get(3, "round.task") is None
    with Store(path) as store:  # across a restart
        assert list(Replies(store.db).stored()) == [
            (1, Reply("round.plain_update", b"u1")),
            (1, Reply("round.decline", b"d")),
            (2, Reply("secagg.advertise_keys", b"\x00\x01")),
        ]
