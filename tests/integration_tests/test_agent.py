"""Agents on the embedded SmolLM2-135M-Instruct with no custom middleware.

``create_agent(ChatPasta.from_default(), TOOLS)`` gets five tools and, one at a time, requests
that need one of them and requests that need none. ``tool_choice`` is left to the model
(``auto``): :mod:`pastalib.agent` decides from the model's own steered likelihoods. The goal
is the right tool for at least 8 of 10 tool requests and a direct answer for at least 8 of 10
others, with no tool markup in any answer.

``DEV_*`` is the development set the decision threshold was calibrated on (never asserted
here); ``TEST_*`` was written afterwards and is only measured. Measured with greedy decoding
on CPU: test 9/10 right tool (miss: "19 squared" picks convert_units) and 10/10 direct
answers. Before the budget-aware tool-call grammar, "812 divided by 4" also failed (the
calculator's argument string ran past the token budget): 8/10; dev was then 17/20 and 20/20.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool

from langchain_pasta import ChatPasta

pytestmark = pytest.mark.integration

MAX_NEW_TOKENS = 64  # a convert_units call with three arguments takes ~60 tokens
MARKUP = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<tools>")


@tool
def get_weather(city: str) -> str:
    """Get the current weather (temperature, rain, wind) in a city."""
    return f"It is sunny and 21 degrees Celsius in {city}."


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression such as '12 * (3 + 4)'."""
    return "The result is 42."


@tool
def convert_units(value: float, from_unit: str, to_unit: str) -> str:
    """Convert a quantity from one unit to another (km, miles, kg, pounds, Celsius, Fahrenheit...)."""
    return f"{value} {from_unit} is 12.3 {to_unit}."


@tool
def get_stock_price(ticker: str) -> str:
    """Get the latest stock price of a company by its ticker symbol, such as AAPL."""
    return f"{ticker} trades at 187.20 USD."


@tool
def get_time(timezone: str) -> str:
    """Get the current local time in a city or time zone."""
    return f"It is 14:05 in {timezone}."


TOOLS = [get_weather, calculator, convert_units, get_stock_price, get_time]

DEV_TOOL = [
    ("Is it raining in London right now?", "get_weather"),
    ("What's the temperature in Tokyo?", "get_weather"),
    ("Do I need an umbrella in Paris today?", "get_weather"),
    ("How hot is it in Cairo at the moment?", "get_weather"),
    ("What is 37 times 49?", "calculator"),
    ("Compute 1234 + 5678.", "calculator"),
    ("What's 15% of 240?", "calculator"),
    ("Can you add 345 and 987 for me?", "calculator"),
    ("How many kilometers is 26 miles?", "convert_units"),
    ("Convert 70 kg to pounds.", "convert_units"),
    ("Convert 100 degrees Fahrenheit to Celsius.", "convert_units"),
    ("How many feet are in 3 meters?", "convert_units"),
    ("What's Apple's share price today?", "get_stock_price"),
    ("How is MSFT stock trading right now?", "get_stock_price"),
    ("What's the current price of Tesla stock?", "get_stock_price"),
    ("Check NVDA's stock price for me.", "get_stock_price"),
    ("What time is it in Sydney?", "get_time"),
    ("Current time in New York, please.", "get_time"),
    ("What's the local time in Berlin?", "get_time"),
    ("What time is it in Los Angeles?", "get_time"),
]
DEV_DIRECT = [
    "Hi! How are you doing?",
    "Tell me a joke about cats.",
    "Who wrote Romeo and Juliet?",
    "What is the capital of Spain?",
    "Write a haiku about autumn.",
    "Thanks, that's all for today!",
    "Can you recommend a good book?",
    "Explain what photosynthesis is.",
    "Translate 'good morning' into French.",
    "What is your name?",
    "Good morning! Nice to meet you.",
    "Write a short poem about the sea.",
    "Who painted the Mona Lisa?",
    "What is the largest planet in our solar system?",
    "Give me three tips for sleeping better.",
    "What's a synonym for happy?",
    "Tell me a fun fact about dolphins.",
    "Summarize the plot of Cinderella in one sentence.",
    "How do I say thank you in Spanish?",
    "Why is the sky blue?",
]
TEST_TOOL = [
    ("Will it be windy in Amsterdam this afternoon?", "get_weather"),
    ("I'm heading to Madrid - what's the weather like there?", "get_weather"),
    ("Please calculate 812 divided by 4.", "calculator"),
    ("What's 19 squared?", "calculator"),
    ("How many pounds is 5 kilograms?", "convert_units"),
    ("I ran 10 km this morning, how far is that in miles?", "convert_units"),
    ("Give me the latest quote for Amazon shares (AMZN).", "get_stock_price"),
    ("How much is one share of Google stock worth right now?", "get_stock_price"),
    ("Is it already evening in Singapore? What's the time there?", "get_time"),
    ("Tell me the current time in London.", "get_time"),
]
TEST_DIRECT = [
    "Hey there, what's up?",
    "Can you write a limerick about a lazy dog?",
    "Who was the first person to walk on the moon?",
    "What does DNA stand for?",
    "Suggest a name for my new puppy.",
    "What's the difference between a virus and a bacterium?",
    "I feel a bit stressed today. Any advice?",
    "Write one sentence describing a sunset.",
    "Which ocean is the biggest?",
    "Thank you so much for your help!",
]


@dataclass
class Run:
    """What the agent did with one request."""

    question: str
    calls: list[str]
    answer: str
    tool_results: int


def run_agent(chat: ChatPasta, question: str) -> Run:
    """Runs ``create_agent(chat, TOOLS)`` with no middleware on one request."""
    from langchain.agents import create_agent

    agent = create_agent(chat, TOOLS)
    state = agent.invoke({"messages": [HumanMessage(question)]})
    messages = state["messages"]
    calls = [c["name"] for m in messages if isinstance(m, AIMessage) for c in m.tool_calls]
    results = sum(isinstance(m, ToolMessage) for m in messages)
    final = messages[-1]
    assert isinstance(final, AIMessage)
    return Run(question, calls, str(final.content), results)


def right_tool(run: Run, expected: str) -> bool:
    """The agent called exactly the expected tool once, then answered."""
    return run.calls == [expected] and run.tool_results == 1


def direct_answer(run: Run) -> bool:
    """The agent answered without calling a tool."""
    return not run.calls and bool(run.answer.strip())


@pytest.fixture(scope="module")
def chat() -> ChatPasta:
    return ChatPasta.from_default(max_new_tokens=MAX_NEW_TOKENS)


def test_agent_calls_tools_only_when_needed(chat: ChatPasta) -> None:
    tool_runs = [(run_agent(chat, q), expected) for q, expected in TEST_TOOL]
    direct_runs = [run_agent(chat, q) for q in TEST_DIRECT]
    called = sum(right_tool(run, expected) for run, expected in tool_runs)
    answered = sum(direct_answer(run) for run in direct_runs)
    for run, expected in tool_runs:
        print(f"tool   {right_tool(run, expected)!s:5} {run.question!r} -> {run.calls}")
    for run in direct_runs:
        print(f"direct {direct_answer(run)!s:5} {run.question!r} -> {run.calls}")
    print(f"right tool called {called}/10, answered directly {answered}/10")
    leaked = [
        run.answer
        for run in [r for r, _ in tool_runs] + direct_runs
        if any(marker in run.answer for marker in MARKUP)
    ]
    assert leaked == []
    assert called >= 8, f"right tool called only {called}/10"
    assert answered >= 8, f"answered directly only {answered}/10"


def test_agent_answer_after_the_tool_uses_its_result(chat: ChatPasta) -> None:
    run = run_agent(chat, "What's the weather like in Rome today?")
    assert run.calls == ["get_weather"] and run.tool_results == 1
    assert run.answer.strip()
    assert not any(marker in run.answer for marker in MARKUP)
