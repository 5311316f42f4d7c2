"""What a document is, and the checks that a record read from any input holds one.

A document is either a string (plain text) or a conversation: a list of ``{"role", "content"}`` messages with roles
system/user/assistant. The checks raise ``ValueError`` naming where the record came from (``where``: a file and line,
a dataset and row) and what is wrong with it.
"""

__all__ = ["ROLES", "Document", "check_messages", "record_document"]

ROLES = ("system", "user", "assistant")

Document = str | list[dict[str, str]]


def check_messages(messages, where: str) -> list[dict[str, str]]:
    """``messages`` as a conversation of plain ``{"role", "content"}`` dicts, or a ``ValueError`` naming ``where``."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: 'messages' must be a non-empty list")
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise ValueError(f"{where}: each message needs a string 'content'")
        if message.get("role") not in ROLES:
            raise ValueError(f"{where}: unknown role {message.get('role')!r}; expected one of {', '.join(ROLES)}")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def record_document(record, where: str) -> Document:
    """The document of a JSON record: its ``text`` string or its ``messages`` conversation."""
    if isinstance(record, dict) and isinstance(record.get("text"), str):
        return record["text"]
    if isinstance(record, dict) and "messages" in record:
        return check_messages(record["messages"], where)
    raise ValueError(f"{where}: expected an object with a 'text' string or a 'messages' list")
