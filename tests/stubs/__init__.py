"""Small upstream servers that behave like the real backends, for the tests."""


def first_chars(pieces: list[str], n: int) -> list[str]:
    """The streamed pieces cut to the first ``n`` characters of their text (where a stop string begins)."""
    out = []
    for piece in pieces:
        if n <= 0:
            break
        out.append(piece[:n])
        n -= len(piece)
    return [p for p in out if p]
