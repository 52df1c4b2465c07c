"""The embedded model steers the same however it was loaded (issue: one resolution rule)."""

from __future__ import annotations

import pytest
from langchain_core.messages import HumanMessage, SystemMessage

from langchain_pasta import ChatPasta, emphasized_message
from pastalib.models import default_model_dir

pytestmark = pytest.mark.integration

MESSAGES = [
    emphasized_message(
        "The meeting was planned for Monday. <em>The meeting has been moved to Thursday.</em>",
        role="system",
    ),
    HumanMessage("What day is the meeting? Answer in one sentence."),
]


def test_every_way_of_loading_gets_the_shipped_config_and_the_same_output() -> None:
    ways = {
        "from_default": ChatPasta.from_default(max_new_tokens=16),
        "from_model_id(default)": ChatPasta.from_model_id("default", max_new_tokens=16),
        "from_model_id(dir)": ChatPasta.from_model_id(default_model_dir(), max_new_tokens=16),
        "model=dir": ChatPasta(model=str(default_model_dir()), max_new_tokens=16),
    }
    engines = {name: chat.engine.pasta for name, chat in ways.items()}
    for name, pasta in engines.items():
        assert pasta.alpha == 0.2, name  # the shipped config's recommended alpha
        assert sum(len(h) for h in pasta.head_config.values()) == 108, name
    outputs = {name: chat.invoke(MESSAGES).content for name, chat in ways.items()}
    assert len(set(outputs.values())) == 1, outputs
    unsteered = ways["from_default"].invoke([SystemMessage(str(MESSAGES[0].content)), MESSAGES[1]])
    assert unsteered.content != outputs["from_default"]  # the steering is really on
