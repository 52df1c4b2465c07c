"""Partner-package conventions: exports, typing marker, version, token counting, options."""

from __future__ import annotations

import importlib
import math
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import torch
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, trim_messages
from transformers import PreTrainedModel

from langchain_pasta import ChatPasta, PastaLLM
from pastalib.errors import ParameterError, PastaError
from tests.tiny import tiny_model
from tests.unit_tests.test_chat_models import chat_tokenizer, make_chat

EXPECTED_ALL = {
    "pastalib": {
        "PASTA",
        "ChatTemplateError",
        "EmphasisError",
        "GrammarError",
        "HeadConfig",
        "HeadConfigError",
        "LengthLimitError",
        "MarkupError",
        "ModelNotAvailableError",
        "ParameterError",
        "ParameterTypeError",
        "PastaError",
        "Span",
        "SpanError",
        "SteeringError",
        "UnsupportedModelError",
        "load_head_config",
        "shipped_head_configs",
    },
    "langchain_pasta": {
        "SPANS_KEY",
        "AutoEmphasis",
        "ChatPasta",
        "ChatTemplateError",
        "EmphasisError",
        "EmphasizedChatPromptTemplate",
        "EmphasizedMessagePromptTemplate",
        "EmphasizedPromptTemplate",
        "EmphasizedPromptValue",
        "PastaLLM",
        "emphasize",
        "emphasized_message",
        "message_spans",
    },
}


@pytest.mark.parametrize("package", sorted(EXPECTED_ALL))
def test_all_is_exactly_the_public_api(package: str) -> None:
    module = importlib.import_module(package)
    assert set(module.__all__) >= EXPECTED_ALL[package]
    for name in module.__all__:
        assert hasattr(module, name), name


@pytest.mark.parametrize("package", sorted(EXPECTED_ALL))
def test_typed_and_versioned(package: str) -> None:
    module = importlib.import_module(package)
    assert (Path(str(module.__file__)).parent / "py.typed").is_file()
    assert module.__version__ == metadata.version("langchain-pasta")


def test_every_error_has_one_root() -> None:
    errors = importlib.import_module("pastalib.errors")
    classes = [getattr(errors, name) for name in errors.__all__]
    assert all(issubclass(cls, PastaError) for cls in classes)


@pytest.fixture(scope="module")
def model() -> PreTrainedModel:
    return tiny_model("llama", dtype=torch.float32)


def test_token_counting_uses_the_models_own_tokenizer(model: PreTrainedModel) -> None:
    """Counts come from the model's tokenizer and chat template; sockets are disabled here."""
    tokenizer = chat_tokenizer()
    chat = make_chat(model, tokenizer)
    text = "Mary is a doctor. What is her job?"
    assert chat.get_token_ids(text) == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert chat.get_num_tokens(text) == len(tokenizer(text, add_special_tokens=False)["input_ids"])
    messages = [SystemMessage("Be brief."), HumanMessage(text)]
    rendered = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}],
        tokenize=False,
        add_generation_prompt=False,
    )
    expected = len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    assert chat.get_num_tokens_from_messages(messages) == expected
    history = [
        SystemMessage("Be brief."),
        HumanMessage("one " * 40),
        AIMessage("ok"),
        *messages[1:],
    ]
    trimmed = trim_messages(
        history, max_tokens=expected, token_counter=chat, strategy="last", include_system=True
    )
    assert trimmed[0].content == "Be brief." and trimmed[-1].content == text
    assert chat.get_num_tokens_from_messages(trimmed) <= expected


def test_json_mode_without_schema_traces_and_returns_json(model: PreTrainedModel) -> None:
    class Recorder(BaseCallbackHandler):
        metadata: dict[str, Any] | None = None

        def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
            self.metadata = kwargs.get("metadata")

    chat = make_chat(model, chat_tokenizer(), max_new_tokens=12)
    recorder = Recorder()
    raw = chat.with_structured_output(method="json_mode", include_raw=True).invoke(
        "Give me JSON.", config={"callbacks": [recorder]}
    )
    assert isinstance(raw["raw"], AIMessage)
    assert str(raw["raw"].content).startswith("{")
    assert raw["raw"].response_metadata["model_provider"] == "pasta"


def test_model_may_be_a_local_path(model: PreTrainedModel, tmp_path: Path) -> None:
    model.save_pretrained(tmp_path)
    chat_tokenizer().save_pretrained(tmp_path)
    chat = ChatPasta(model=str(tmp_path), head_config=[1], max_new_tokens=2)
    assert chat.model.config.num_hidden_layers == model.config.num_hidden_layers
    assert chat.model_name == tmp_path.name
    assert isinstance(chat.invoke("hi"), AIMessage)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"temprature": 0.7}, "temprature"),
        ({"max_token": 5}, "max_token"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"alpha": math.nan}, "alpha"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": -1.0}, "alpha"),
        ({"top_p": 5.0}, "top_p"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"temperature": -0.1}, "temperature"),
        ({"decode_steps": -3}, "decode_steps"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"timeout": 0}, "timeout"),
        ({"scale_position": "middle"}, "scale_position"),
    ],
)
@pytest.mark.parametrize("cls", [ChatPasta, PastaLLM])
def test_bad_fields_raise_naming_the_parameter(
    cls: type[Any], model: PreTrainedModel, options: dict[str, Any], named: str
) -> None:
    with pytest.raises(ParameterError, match=named):
        cls(model=model, tokenizer=chat_tokenizer(), head_config=[1], **options)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"top_p": 1.5}, "top_p"),
        ({"decode_steps": "2"}, "decode_steps"),
        ({"alpha": math.inf}, "alpha"),
        ({"temprature": 0.5}, "temprature"),
    ],
)
def test_bad_bind_options_raise_at_bind(
    model: PreTrainedModel, options: dict[str, Any], named: str
) -> None:
    chat = make_chat(model, chat_tokenizer())
    with pytest.raises(ParameterError, match=named):
        chat.bind(**options)
    with pytest.raises(ParameterError, match=named):
        chat.invoke("hi", **options)


def test_a_stop_string_is_one_sequence(model: PreTrainedModel) -> None:
    llm = PastaLLM(model=model, tokenizer=chat_tokenizer(), head_config=[1], stop="Observation")
    assert llm.stop == ["Observation"]
    full = llm.invoke("Mary is a doctor.", max_new_tokens=12, stop=[])
    cut = llm.invoke("Mary is a doctor.", max_new_tokens=12, stop="Observation")
    assert cut == full.split("Observation")[0]


def test_from_model_id_passes_loading_options(
    model: PreTrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pastalib.models

    seen: list[dict[str, Any]] = []
    real = pastalib.models.load_model

    def spy(name: Any, **kwargs: Any) -> Any:
        seen.append(kwargs)
        return real(name, **kwargs)

    model.save_pretrained(tmp_path)
    chat_tokenizer().save_pretrained(tmp_path)
    monkeypatch.setattr(pastalib.models, "load_model", spy)
    chat = ChatPasta.from_model_id(
        tmp_path, dtype=torch.float64, model_kwargs={"low_cpu_mem_usage": True}, head_config=[1]
    )
    assert seen[0]["model_kwargs"] == {"low_cpu_mem_usage": True}
    assert chat.model.dtype == torch.float64
