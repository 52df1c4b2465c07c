"""Choosing a mechanism, head config and alpha: candidates, ranking on dev data.

``pasta profile`` scores heads with a cheap proxy; generation decides. :func:`select` runs
each candidate on a dev slice of the train split next to the unsteered model, and
:func:`rank_conditions` keeps those at least as good as unsteered on every task, best macro
rate first: the rule that chose the shipped default config.

A candidate names its mechanism with a prefix (:func:`parse_mechanism_candidate`):

* ``HEADS[@ALPHA]`` or ``pasta:HEADS[@ALPHA]``: PASTA on the heads of HEADS;
* ``boost[@ALPHA]``: InstABoost-style boost in every head (``beta = 1/ALPHA``);
  ``boost:HEADS[@ALPHA]`` takes only the recommended alpha and decode_steps of HEADS;
* ``spotlight:HEADS[@TARGET]``: SpotLight-style target share TARGET in (0, 1) on HEADS.

``mechanisms=`` (``--mechanism``, repeatable) runs every unprefixed candidate under each
mechanism listed, as ``MECHANISM:HEADS[@VALUE]``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pastalib.errors import ParameterError
from pastalib.harness.evaluation import Condition, evaluate
from pastalib.heads import HeadConfigSpec, split_alpha
from pastalib.heads import recommended_settings as heads_recommended_settings
from pastalib.pasta import PASTA
from pastalib.steering import MECHANISMS, Mechanism, boost_factor, check_mechanism, check_target

__all__ = [
    "DEFAULT_ALPHA",
    "Candidate",
    "Recommended",
    "best_candidate",
    "candidate_conditions",
    "config_document",
    "expand_candidates",
    "parse_candidate",
    "parse_mechanism_candidate",
    "rank_conditions",
    "recommended_settings",
    "resolve_settings",
    "select",
]

DEFAULT_ALPHA = 0.01
"""Alpha used when neither the caller nor the head config names one (the paper's value)."""


@dataclass(frozen=True)
class Recommended:
    """The steering settings a head-config file recommends (None where it names none)."""

    alpha: float | None = None
    decode_steps: int | None = None


def recommended_settings(head_config: HeadConfigSpec) -> Recommended:
    """The ``alpha`` and ``decode_steps`` a head config recommends.

    A view of :func:`pastalib.heads.recommended_settings`, the one reader of both.

    Raises:
        HeadConfigError: The file cannot be read, or stores an alpha or decode_steps of the
            wrong type or range.
    """
    return Recommended(*heads_recommended_settings(head_config))


def resolve_settings(
    head_config: str, alpha: float | None, decode_steps: int | None = None
) -> tuple[str, float, int | None]:
    """Heads, alpha and decode_steps: explicit values, else ``HEADS@ALPHA``, else the config's.

    Alpha falls back to :data:`DEFAULT_ALPHA`.
    """
    heads, at_alpha = parse_candidate(head_config)
    recommended = recommended_settings(heads)
    scale = next(a for a in (alpha, at_alpha, recommended.alpha, DEFAULT_ALPHA) if a is not None)
    steps = decode_steps if decode_steps is not None else recommended.decode_steps
    return heads, scale, steps


def parse_candidate(spec: str) -> tuple[str, float | None]:
    """Splits ``HEADS[@ALPHA]``: the head config and its alpha (None if absent).

    Raises:
        ParameterError: HEADS is empty.
        HeadConfigError: The alpha is not a finite number > 0.
    """
    if spec.startswith("@"):
        raise ParameterError(f"{spec!r}: the head config before '@' is empty (HEADS@ALPHA).")
    return split_alpha(spec)


@dataclass(frozen=True)
class Candidate:
    """A parsed candidate: its mechanism, heads and the value after ``@``.

    Attributes:
        name: The candidate as written (the condition's name).
        mechanism: ``"pasta"``, ``"boost"`` or ``"spotlight"``.
        heads: The head-config spec (None: ``boost`` without heads).
        value: The number after ``@``: alpha for pasta and boost, target for spotlight.
    """

    name: str
    mechanism: Mechanism
    heads: str | None
    value: float | None


def parse_mechanism_candidate(spec: str) -> Candidate:
    """Parses ``[MECHANISM:]HEADS[@VALUE]`` or ``boost[@ALPHA]`` (see the module docstring).

    Only a prefix that is a mechanism's name counts (``layers:18-29`` is heads).

    Raises:
        ParameterError: Empty heads, a spotlight target outside (0, 1), or a boost alpha
            that does not give ``beta > 1``.
        HeadConfigError: The value after ``@`` is not a finite number > 0.
    """
    prefix, colon, rest = spec.partition(":")
    mechanism: str = "pasta"
    if prefix in MECHANISMS and colon:
        mechanism, spec_heads = prefix, rest
    elif _has_prefix(spec):
        mechanism, spec_heads = "boost", spec[len("boost") :]
    else:
        spec_heads = spec
    if mechanism == "boost" and (not spec_heads or spec_heads.startswith("@")):
        heads: str | None = None
        value = parse_candidate("boost" + spec_heads)[1]
    else:
        heads, value = parse_candidate(spec_heads) if spec_heads else ("", None)
        if not heads:
            raise ParameterError(f"{spec!r}: the head config after {mechanism + ':'!r} is empty.")
    if mechanism == "spotlight" and value is not None:
        check_target(value)
    if mechanism == "boost" and value is not None:
        boost_factor(value, "exclude")
    return Candidate(spec, mechanism, heads, value)  # type: ignore[arg-type]


def expand_candidates(candidates: Sequence[str], mechanisms: Sequence[str]) -> list[str]:
    """Every candidate, an unprefixed one once per mechanism in ``mechanisms``.

    Raises:
        ParameterError: An expanded candidate is malformed (e.g. ``spotlight:HEADS@2``).
    """
    expanded: list[str] = []
    for spec in candidates:
        if _has_prefix(spec):
            expanded.append(spec)
            continue
        for mechanism in mechanisms:
            expanded.append(spec if mechanism == "pasta" else f"{mechanism}:{spec}")
    for spec in expanded:
        parse_mechanism_candidate(spec)
    return expanded


def _has_prefix(spec: str) -> bool:
    prefix, colon, _ = spec.partition(":")
    return bool(colon and prefix in MECHANISMS) or spec == "boost" or spec.startswith("boost@")


def candidate_conditions(
    pasta: PASTA,
    candidates: Sequence[str],
    mechanisms: Sequence[str] = ("pasta",),
    target: float | None = None,
) -> list[Condition]:
    """``unsteered`` and one steered condition per candidate (and mechanism).

    A pasta or boost candidate steers at its own alpha, else its config's recommended one,
    else :data:`DEFAULT_ALPHA`; a spotlight one at its own target, else ``target``, else
    the steerer's. Each runs at its config's recommended ``decode_steps``.

    Args:
        pasta: The steerer (for the model's dimensions).
        candidates: Specs (see :func:`parse_mechanism_candidate`).
        mechanisms: Mechanisms to run each unprefixed candidate under.
        target: Spotlight's target where a candidate names none.

    Raises:
        ParameterError: A candidate is repeated or malformed, or a mechanism is unknown.
        HeadConfigError: A candidate's heads do not fit the model (checked before any
            generation).
    """
    for mechanism in mechanisms:
        check_mechanism(mechanism)
    if not mechanisms or len(set(mechanisms)) != len(mechanisms):
        raise ParameterError(f"Name each mechanism once, at least one; got {list(mechanisms)}.")
    if target is not None:
        check_target(target)
    specs = expand_candidates(candidates, mechanisms)
    if len(set(specs)) != len(specs) or len(set(candidates)) != len(candidates):
        raise ParameterError(f"Each candidate must be given once, got {specs}.")
    conditions = [Condition("unsteered")]
    for spec in specs:
        candidate = parse_mechanism_candidate(spec)
        heads: str | None = candidate.heads
        decode_steps: int | None = None
        alpha: float | None = None
        if heads is not None:
            pasta.resolve_heads(heads)
            recommended = recommended_settings(heads)
            decode_steps, alpha = recommended.decode_steps, recommended.alpha
        if candidate.mechanism == "spotlight":
            conditions.append(
                Condition(
                    spec,
                    steer=True,
                    head_config=heads,
                    decode_steps=decode_steps,
                    mechanism="spotlight",
                    target=candidate.value if candidate.value is not None else target,
                )
            )
            continue
        scale = next(a for a in (candidate.value, alpha, DEFAULT_ALPHA) if a is not None)
        if candidate.mechanism == "boost":
            boost_factor(scale, "exclude")
            heads = None  # boost steers every head
        conditions.append(
            Condition(
                spec,
                steer=True,
                head_config=heads,
                alpha=scale,
                decode_steps=decode_steps,
                mechanism=candidate.mechanism,
            )
        )
    return conditions


def rank_conditions(
    results: Mapping[str, Any], baseline: str = "unsteered", metric: str = "lenient_ok"
) -> list[dict[str, Any]]:
    """Ranks every condition but ``baseline`` for choosing a steering config on dev data.

    A condition is *eligible* when it is at least as good as the baseline on every task; the
    ranking puts eligible conditions first, each group by macro rate over tasks (best
    first). This is the rule that chose the shipped default config.

    Args:
        results: What :func:`evaluate` returned, with ``baseline`` among its conditions.
        baseline: The condition every candidate must match on each task.
        metric: The rate compared (one of :data:`METRICS`).

    Returns:
        ``[{"name", "rate", "eligible", "worse_on"}]``, best first; ``worse_on`` lists the
        tasks where the condition is below the baseline.

    Raises:
        ParameterError: ``baseline`` is not a condition of ``results``.
    """
    names = [condition["name"] for condition in results["settings"]["conditions"]]
    if baseline not in names:
        raise ParameterError(f"Baseline {baseline!r} is not among the conditions {names}.")
    rows = []
    for name in names:
        if name == baseline:
            continue
        worse = [
            task
            for task, by_condition in results["tasks"].items()
            if by_condition[name][metric] < by_condition[baseline][metric]
        ]
        rows.append(
            {
                "name": name,
                "rate": results["overall"][name][metric],
                "eligible": not worse,
                "worse_on": worse,
            }
        )
    return sorted(rows, key=lambda row: (not row["eligible"], -row["rate"]))


def best_candidate(ranking: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The chosen row of a ranking: the first, if it is eligible."""
    return ranking[0] if ranking and ranking[0]["eligible"] else None


def config_document(
    pasta: PASTA, results: Mapping[str, Any], row: Mapping[str, Any]
) -> dict[str, Any]:
    """The head-config file of a ranked candidate, loadable as is (``--head-config FILE``).

    It stores the candidate's heads, the alpha and ``decode_steps`` it was run at (the file's
    recommended settings) and how it was chosen.

    Args:
        pasta: The steerer the candidates were run with (for the model's dimensions).
        results: What :func:`select` returned.
        row: One row of ``results["ranking"]``.
    """
    from pastalib import __version__

    settings = results["settings"]
    condition = next(c for c in settings["conditions"] if c["name"] == row["name"])
    spec = condition["head_config"]
    heads = pasta.head_config if spec is None else pasta.resolve_heads(spec)
    return {
        "model": str(getattr(pasta.model.config, "_name_or_path", "")),
        "tasks": list(settings["tasks"]),
        "alpha": condition["alpha"],
        "decode_steps": condition["decode_steps"],
        "mechanism": condition.get("mechanism", "pasta"),
        "target": condition.get("target"),
        "selection": "pasta select",
        "candidate": row["name"],
        "chosen_on": {
            "split": settings["split"],
            "skip": settings["skip"],
            "limit": settings["limit"],
            "seed": settings["seed"],
            "macro_lenient_ok": row["rate"],
            "eligible": row["eligible"],
            "below_unsteered_on": list(row["worse_on"]),
        },
        "library_version": __version__,
        "num_layers": pasta.num_layers,
        "num_heads": pasta.num_heads,
        "head_config": {str(layer): [int(h) for h in heads[layer]] for layer in sorted(heads)},
    }


def select(
    pasta: PASTA,
    candidates: Sequence[str],
    tasks: Sequence[str],
    *,
    skip: int = 8,
    limit: int = 24,
    seed: int = 0,
    max_new_tokens: int = 40,
    batch_size: int = 8,
    mechanisms: Sequence[str] = ("pasta",),
    target: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Generates with every candidate on a dev slice of train and ranks them.

    Args:
        pasta: The steerer wrapping the model.
        candidates: ``[MECHANISM:]HEADS[@VALUE]`` or ``boost[@ALPHA]`` specs (see
            :func:`candidate_conditions`).
        tasks: Task names.
        skip: Train examples to skip per task (those used for profiling).
        limit: Dev examples per task.
        seed: Data seed.
        max_new_tokens: Generation length.
        batch_size: Prompts per generate call.
        mechanisms: Mechanisms to run each unprefixed candidate under.
        target: Spotlight's target where a candidate names none.
        progress: Called with the number of outputs just generated.

    Returns:
        What :func:`~pastalib.harness.evaluation.evaluate` returns, plus ``"ranking"``
        (:func:`rank_conditions`).
    """
    conditions = candidate_conditions(pasta, candidates, mechanisms, target)
    results = evaluate(
        pasta,
        tasks,
        conditions,
        split="train",
        limit=limit,
        seed=seed,
        skip=skip,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
    )
    results["ranking"] = rank_conditions(results)
    return results
