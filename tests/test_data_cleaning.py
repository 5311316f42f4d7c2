import pytest
from datasets import Dataset

from scratchgpt.data.cleaning import clean_batch, clean_documents
from scratchgpt.data.prepare import DOCUMENT_FEATURES


def as_dataset(texts=(), conversations=()):
    rows = [{"text": t, "messages": None} for t in texts] + [{"text": None, "messages": c} for c in conversations]
    return Dataset.from_list([{**row, "document": i, "piece": 0, "ends_document": True} for i, row in enumerate(rows)],
                             features=DOCUMENT_FEATURES)


def cleaned_texts(dataset):
    return [row["text"] for row in dataset]


def test_off_changes_nothing():
    dataset = as_dataset(["a", "a", "\x00"])
    result, report = clean_documents(dataset, "off")
    assert result is dataset and report == {"mode": "off"}


def test_lenient_normalises_strips_controls_and_drops_duplicates_and_empties():
    decomposed = "cafe\u0301"  # e + combining acute accent; NFC makes it one character
    texts = [decomposed, "café", "bell\x07 ring\x00", "keep  double  spaces", "   ", "keep  double  spaces"]
    result, report = clean_documents(as_dataset(texts), "lenient")
    assert cleaned_texts(result) == ["café", "bell ring", "keep  double  spaces"]
    assert report == {"mode": "lenient", "documents_in": 6, "documents_normalised": 1, "control_chars_removed": 2,
                      "whitespace_chars_removed": 0, "too_short_removed": 1, "duplicates_removed": 2,
                      "documents_out": 3}


def test_balanced_collapses_whitespace_and_drops_short_documents():
    texts = ["too short", "a   long\t\tenough line   \n\n\n\nwith a second paragraph  "]
    result, report = clean_documents(as_dataset(texts), "balanced")
    assert cleaned_texts(result) == ["a long enough line\n\nwith a second paragraph"]
    assert report["too_short_removed"] == 1 and report["whitespace_chars_removed"] == 10


def test_strict_uses_nfkc_removes_format_characters_and_needs_64_characters():
    long_text = "ﬁne\u200b words " * 8  # the "fi" ligature becomes "fi" under NFKC; zero-width space is removed
    result, report = clean_documents(as_dataset([long_text, "x" * 63]), "strict")
    assert cleaned_texts(result) == [("fine words " * 8).strip()]
    assert report["too_short_removed"] == 1 and report["control_chars_removed"] == 8


def test_conversations_are_cleaned_per_message_and_deduplicated_whole():
    chat = [{"role": "user", "content": "hi\x00"}, {"role": "assistant", "content": "hello"}]
    other = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "bye"}]
    result, report = clean_documents(as_dataset(conversations=[chat, chat, other]), "lenient")
    assert [row["messages"] for row in result] == [[{"role": "user", "content": "hi"},
                                                   {"role": "assistant", "content": "hello"}], other]
    assert report["duplicates_removed"] == 1 and report["control_chars_removed"] == 2


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match="unknown cleaning mode 'aggressive'; use off, lenient, balanced, strict"):
        clean_documents(as_dataset(["x"]), "aggressive")


def test_clean_batch_is_a_pure_function():
    batch = {"text": ["a\x00b"], "messages": [None]}
    assert clean_batch(batch, "lenient")["text"] == ["ab"]
    assert batch["text"] == ["a\x00b"]


def test_pieces_of_a_long_document_are_never_dropped_and_keep_their_edges():
    # one document in three pieces (as sources cuts a long text), then a short whole document
    rows = [("  Start of a long text\n", 0, False), ("x\n", 1, False), ("x\n", 2, True), ("tiny", 0, True)]
    dataset = Dataset.from_list([{"text": t, "messages": None, "document": d, "piece": p, "ends_document": e}
                                 for d, (t, p, e) in zip([0, 0, 0, 1], rows)], features=DOCUMENT_FEATURES)
    result, report = clean_documents(dataset, "balanced")
    # the pieces stay (however short, and though two are equal); only the document's own start and end are stripped
    assert cleaned_texts(result) == ["Start of a long text\n", "x\n", "x"]
    assert report["too_short_removed"] == 1 and report["duplicates_removed"] == 0


def test_a_document_in_pieces_counts_once():
    """A long document is read in pieces (one record each): the report counts documents, as the split table does."""
    rows = [{"text": f"piece {i} of the long one, " * 20, "messages": None, "document": 0, "piece": i,
             "ends_document": i == 2} for i in range(3)]
    rows += [{"text": "short", "messages": None, "document": 1, "piece": 0, "ends_document": True},
             {"text": "a whole document of its own, long enough to keep", "messages": None, "document": 2,
              "piece": 0, "ends_document": True}]
    result, report = clean_documents(Dataset.from_list(rows, features=DOCUMENT_FEATURES), "balanced")
    assert len(result) == 4  # the three pieces and the long single document
    assert (report["documents_in"], report["too_short_removed"], report["documents_out"]) == (3, 1, 2)
