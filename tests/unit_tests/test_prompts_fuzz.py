"""Property tests: template spans against an independent reference, and span -> token mapping
over three tokenizer families (byte-level BPE, WordPiece, Unigram) trained here offline.

Template reference: the same template is rendered by LangChain's own formatter with the
emphasis written as control characters (never in the generated values) instead of markup,
and the spans are read off where those characters landed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.prompts import PromptTemplate
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from langchain_pasta.prompts import EmphasizedPromptTemplate, EmphasizedPromptValue, emphasize
from pastalib.spans import Markers, Span, SpanError, normalize_spans, token_mask_from_spans
from tests.tiny import CORPUS, tiny_tokenizer

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Reference delimiters: template emphasis, emphasized variables, an explicit value's spans.
OWN, VAR, INNER = ("\x00", "\x01"), ("\x02", "\x03"), ("\x04", "\x05")
CONTROL = "".join(OWN + VAR + INNER)
FOREIGN = Markers()

# --- generators ---------------------------------------------------------------------------

VALUE_PIECES = [
    "a", "Bob", " ", "\n", "  \n", "<em>", "</em>", "\\", "\\<em>", "{", "}", "{{", "}}",
    "{x}", "{{a}}", "{% if %}", "&", "<", ">", '"', "'", "é", "中文", "🙂", "\u200b",
    "\ue000", "\ue001", "\ue002", "\ue003", "\ue004", FOREIGN.nonce, FOREIGN.wrap(0, "X"),
    FOREIGN.wrap(1, ""), f"\ue002{FOREIGN.nonce}0\ue004", "0", "7f",
]  # fmt: skip
value_text = st.lists(
    st.one_of(
        st.sampled_from(VALUE_PIECES),
        st.text(st.characters(codec="utf-8", exclude_characters=CONTROL), max_size=4),
    ),
    max_size=6,
).map("".join)


@st.composite
def explicit_value(draw: st.DrawFn) -> EmphasizedPromptValue:
    text = draw(value_text.filter(bool))
    start = draw(st.integers(0, len(text) - 1))
    end = draw(st.integers(start + 1, len(text)))
    return emphasize(text, text[start:end])


template_value = st.one_of(value_text, explicit_value())

LITERAL_PIECES = {
    "f-string": ["a", " ", "\n", "{", "}", "é", "🙂", "\ue000", "\ue002", "\ue004", "x=", "&"],
    "mustache": ["a", " ", "\n", "é", "🙂", "\ue000", "\ue002", "\ue004", "x=", "&", "#"],
    "jinja2": ["a", " ", "\n", "}", "é", "🙂", "\ue000", "\ue002", "\ue004", "x=", "%", "#"],
}
VARIABLES = ["a", "b", "c"]


def field(template_format: str, name: str, triple: bool) -> str:
    if template_format == "f-string":
        return "{" + name + "}"
    if template_format == "mustache":
        return "{{{" + name + "}}}" if triple else "{{" + name + "}}"
    return "{{ " + name + " }}"


def loop(template_format: str) -> str:
    if template_format == "mustache":
        return "{{#items}}[{{.}}]{{/items}}"
    return "{% for it in items %}[{{ it }}]{% endfor %}"


Segment = tuple[str, Any]


def segments(template_format: str, depth: int = 0) -> st.SearchStrategy[Segment]:
    literal = st.lists(st.sampled_from(LITERAL_PIECES[template_format]), min_size=1, max_size=4)
    options: list[st.SearchStrategy[Segment]] = [
        st.tuples(st.just("lit"), literal.map("".join)),
        st.tuples(st.just("var"), st.tuples(st.sampled_from(VARIABLES), st.booleans())),
    ]
    if template_format != "f-string":
        options.append(st.tuples(st.just("loop"), st.none()))
    if depth == 0:
        inner = st.lists(segments(template_format, 1), min_size=1, max_size=3)
        options.append(st.tuples(st.just("em"), inner))
    return st.one_of(*options)


def build(template_format: str, parts: list[Segment], emphasized: set[str]) -> tuple[str, str]:
    """The marked-up template, and the reference template with control characters."""
    ours, ref = [], []
    for kind, data in parts:
        if kind == "lit":
            text = (
                data.replace("{", "{{").replace("}", "}}")
                if template_format == "f-string"
                else data
            )
            ours.append(text)
            ref.append(text)
        elif kind == "var":
            name, triple = data
            text = field(template_format, name, triple)
            ours.append(text)
            ref.append(f"{VAR[0]}{text}{VAR[1]}" if name in emphasized else text)
        elif kind == "loop":
            ours.append(loop(template_format))
            ref.append(loop(template_format))
        else:
            inner_ours, inner_ref = build(template_format, data, emphasized)
            ours.append(f"<em>{inner_ours}</em>")
            ref.append(f"{OWN[0]}{inner_ref}{OWN[1]}")
    return "".join(ours), "".join(ref)


def used_variables(parts: list[Segment]) -> set[str]:
    found: set[str] = set()
    for kind, data in parts:
        if kind == "var":
            found.add(data[0])
        elif kind == "em":
            found |= used_variables(data)
    return found


def reference_value(value: Any) -> Any:
    """What the reference formatter gets: an explicit value's spans as control characters."""
    if isinstance(value, EmphasizedPromptValue):
        text = value.text
        for start, end in reversed(value.spans):
            text = f"{text[:start]}{INNER[0]}{text[start:end]}{INNER[1]}{text[end:]}"
        return text
    if isinstance(value, list):
        return [reference_value(item) for item in value]
    return value


def read_reference(rendered: str) -> tuple[str, list[Span]]:
    """Hand-written: removes the control characters and records where each pair sat."""
    text: list[str] = []
    stacks: dict[str, list[int]] = {OWN[0]: [], VAR[0]: [], INNER[0]: []}
    closers = {OWN[1]: OWN[0], VAR[1]: VAR[0], INNER[1]: INNER[0]}
    spans: list[Span] = []
    for char in rendered:
        if char in stacks:
            stacks[char].append(len(text))
        elif char in closers:
            start = stacks[closers[char]].pop()
            if len(text) > start:
                spans.append((start, len(text)))
        else:
            text.append(char)
    assert not any(stacks.values())
    return "".join(text), normalize_spans(spans)


@pytest.mark.parametrize("template_format", ["f-string", "mustache", "jinja2"])
def test_template_spans_match_the_reference(template_format: Any) -> None:
    @FUZZ
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        parts = data.draw(st.lists(segments(template_format), min_size=1, max_size=6))
        chosen = data.draw(st.sets(st.sampled_from(VARIABLES)))
        emphasized = chosen & used_variables(parts)
        # Strings or explicit EmphasizedPromptValues, emphasized or not.
        values: dict[str, Any] = {name: data.draw(template_value) for name in VARIABLES}
        values["items"] = data.draw(st.lists(template_value, max_size=3))
        marked, reference = build(template_format, parts, emphasized)
        prompt = EmphasizedPromptTemplate.from_template(
            marked, template_format=template_format, emphasized_variables=sorted(emphasized)
        )
        value = prompt.format_prompt(**values)
        ref_values = {k: reference_value(v) for k, v in values.items()}
        rendered = PromptTemplate.from_template(reference, template_format=template_format).format(
            **ref_values
        )
        expected_text, expected_spans = read_reference(rendered)
        assert value.text == expected_text
        assert value.spans == expected_spans
        assert prompt.format(**values) == expected_text

    check()


# --- span -> token mapping over three tokenizer families ----------------------------------

TOKEN_CORPUS = [
    *CORPUS,
    "Unicode text: café, naïve, 中文字符, emoji 🙂 and symbols <em>&</em> {braces}.",
    "Retrieved documents often contain HTML like <p><em>42 EUR</em></p> and new lines.\n",
]


def _fast(tokenizer: Tokenizer, **special: str) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **special)


@lru_cache(maxsize=1)
def wordpiece_tokenizer() -> PreTrainedTokenizerFast:
    """BERT-style: normalizer, whitespace/punctuation split, ``##`` continuations, [CLS]/[SEP]."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    )
    tokenizer.train_from_iterator(TOKEN_CORPUS * 4, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[
            ("[CLS]", tokenizer.token_to_id("[CLS]")),
            ("[SEP]", tokenizer.token_to_id("[SEP]")),
        ],
    )
    return _fast(tokenizer, unk_token="[UNK]", pad_token="[PAD]")


@lru_cache(maxsize=1)
def unigram_tokenizer() -> PreTrainedTokenizerFast:
    """SentencePiece-like: NFKC, ``▁`` metaspace, a Unigram model, an appended ``</s>``."""
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=200, special_tokens=["<pad>", "<unk>", "</s>"], unk_token="<unk>"
    )
    tokenizer.train_from_iterator(TOKEN_CORPUS * 4, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", tokenizer.token_to_id("</s>"))]
    )
    return _fast(tokenizer, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")


def bpe_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE with a BOS, as in ``tests/tiny.py``."""
    return copy.deepcopy(tiny_tokenizer())


FAMILIES: dict[str, Callable[[], PreTrainedTokenizerFast]] = {
    "bpe_byte_level": bpe_tokenizer,
    "wordpiece": wordpiece_tokenizer,
    "unigram": unigram_tokenizer,
}

TEXT_PIECES = [
    "Mary", " is", " a doctor", ".", " ", "  ", "\n", "café", " naïve", "中文", "🙂", "<em>",
    "</em>", "{x}", "42 EUR", "\ue002", "\u200b", "ﬁ", "Ⅻ", "\t", "IMPORTANT:", "x",
]  # fmt: skip
fuzz_text = st.lists(
    st.one_of(st.sampled_from(TEXT_PIECES), st.text(st.characters(codec="utf-8"), max_size=3)),
    min_size=1,
    max_size=10,
).map("".join)


@st.composite
def text_and_spans(draw: st.DrawFn) -> tuple[str, list[Span]]:
    text = draw(fuzz_text.filter(bool))
    raw = draw(
        st.lists(
            st.tuples(st.integers(0, len(text) - 1), st.integers(1, len(text))).filter(
                lambda s: s[0] < s[1]
            ),
            min_size=1,
            max_size=3,
        )
    )
    return text, normalize_spans(raw, len(text))


def reference_mask(
    offsets: list[list[int]], attention: list[int], spans: list[Span]
) -> list[bool] | None:
    """Hand-written: a real token is emphasized iff its characters overlap a span; ``None``
    when some span overlaps no real token or ends past the last one."""
    real = [a == 1 and e > s for (s, e), a in zip(offsets, attention, strict=True)]
    covered_end = max((e for (_, e), r in zip(offsets, real, strict=True) if r), default=0)
    mask = [False] * len(offsets)
    for start, end in spans:
        hits = [r and e > start and s < end for (s, e), r in zip(offsets, real, strict=True)]
        if not any(hits) or end > covered_end:
            return None
        mask = [m or h for m, h in zip(mask, hits, strict=True)]
    return mask


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_span_to_token_mapping(family: str) -> None:
    tokenizer = FAMILIES[family]()

    @FUZZ
    @given(rows=st.lists(text_and_spans(), min_size=1, max_size=3))
    def check(rows: list[tuple[str, list[Span]]]) -> None:
        texts = [text for text, _ in rows]
        spans = [row_spans for _, row_spans in rows]
        encoded = tokenizer(texts, return_offsets_mapping=True, padding=True, return_tensors="pt")
        offsets, attention = encoded["offset_mapping"], encoded["attention_mask"]
        expected = [
            reference_mask(offsets[i].tolist(), attention[i].tolist(), spans[i])
            for i in range(len(rows))
        ]
        if any(row is None for row in expected):
            with pytest.raises(SpanError, match=r"Row \d+: span \(\d+, \d+\) is not covered"):
                token_mask_from_spans(offsets, attention, spans)
            return
        mask = token_mask_from_spans(offsets, attention, spans)
        assert mask.dtype == torch.bool
        assert mask.tolist() == expected
        for i, (text, row_spans) in enumerate(rows):
            pairs = offsets[i].tolist()
            # Special tokens and pads are never emphasized.
            for j, (s, e) in enumerate(pairs):
                if e <= s or attention[i][j] == 0:
                    assert not mask[i][j]
            # Every emphasized character that some token covers is in an emphasized token.
            for start, end in row_spans:
                for char in range(start, end):
                    owners = [
                        j for j, (s, e) in enumerate(pairs) if s <= char < e and attention[i][j]
                    ]
                    assert all(mask[i][j] for j in owners), (text, char)

    check()


def test_three_families_really_differ() -> None:
    # Guards the fuzz above against three copies of one tokenizer.
    text = "Mary is a doctor. café 🙂 occupation uppercase"
    pieces = {name: make().tokenize(text) for name, make in FAMILIES.items()}
    assert any(p.startswith("Ġ") for p in pieces["bpe_byte_level"])
    assert any(p.startswith("##") for p in pieces["wordpiece"])
    assert any(p.startswith("▁") for p in pieces["unigram"])
    encoded = wordpiece_tokenizer()(text, return_offsets_mapping=True)
    # The BERT normalizer lowercases and strips accents, yet offsets index the original.
    assert [text[s:e] for s, e in encoded["offset_mapping"] if e > s][:2] == ["Mary", "is"]
