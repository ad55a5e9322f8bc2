"""Types of the optional C module ``_classify.c`` (its docstring has the contract)."""

def count(chunk: bytes, off: int, end: int, seq: int, msg_type: int, family_a: int, family_b: int,
          listen: int, close_wait: int, plain: bytes, states: list[int],
          usage: dict[tuple[int, bytes, bytes, int], int], usable: bytes | bytearray,
          interest: bytes | bytearray, wildcard: bytes | bytearray, specific_port: bytes | bytearray,
          specific: set[tuple[bytes, int]], /) -> int: ...
