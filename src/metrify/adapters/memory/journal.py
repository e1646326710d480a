"""A list-backed ingest journal (a fake of the SQLite one, for tests)."""

from __future__ import annotations


class InMemoryIngestJournal:
    def __init__(self) -> None:
        self.batches: dict[int, bytes] = {}
        self.answers: dict[int, tuple[str, str]] = {}  # seq -> (token, answer)
        self.high = 0
        self.fail_next_append = False  # a disk that refuses the next write

    def append(self, seq: int, payload: bytes, token: str = "", answer: str = "") -> None:
        if self.fail_next_append:
            self.fail_next_append = False
            raise OSError("no space left on device")
        self.batches[seq] = payload
        self.answers[seq] = (token, answer)
        self.high = max(self.high, seq)

    def answer_to(self, token: str) -> str | None:
        return next((answer for seq, (kept, answer) in self.answers.items() if kept == token), None)

    def after(self, seq: int) -> list[tuple[int, bytes]]:
        return sorted((number, payload) for number, payload in self.batches.items() if number > seq)

    def last(self) -> int:
        return self.high

    def drop_through(self, seq: int) -> None:
        for number in [n for n in self.batches if n <= seq]:
            del self.batches[number]
            del self.answers[number]
