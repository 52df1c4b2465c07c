"""Prompt templates of the four task families, per split (data tables).

Train and test never share a template. See :mod:`pastalib.harness.tasks.data` for how they are
filled.
"""

from __future__ import annotations

__all__ = [
    "BIOS",
    "END_PHRASES",
    "FORMAT_ASKS",
    "FORMAT_QUESTIONS",
    "JSON_ASKS",
    "KC_FACTS",
    "KC_QUESTIONS",
    "KC_TARGETS",
    "KC_WRAPPERS",
    "N_FILLERS",
    "PRONOUN_ASKS",
    "START_PHRASES",
    "WORD_LIMITS",
]

# Templates. Bios use a small markup: ``{they}``-family placeholders take the bio's pronoun
# (capitalised when written ``{They}``), ``{plural|singular}`` picks the verb form that agrees
# with it. This lets one template yield both the she/he bio and its exact "they" rewrite.
# Sentence 2 of every bio starts with ``{They}`` so that the two-sentence pronoun target
# always shows the rewrite.

BIOS: dict[str, tuple[tuple[str, ...], ...]] = {
    "train": (
        (
            "{name} is {a_occupation} who lives in {city}.",
            "{They} {work|works} at {company}, and in {their} free time {they} {enjoy|enjoys} "
            "{hobby}.",
            "Friends say {they} {are|is} patient and that {their} advice is always practical.",
        ),
        (
            "{name}, {a_occupation}, lives in {city} with two cats.",
            "{They} {have|has} worked at {company} for six years and {know|knows} the place well.",
            "{Their} favourite pastime is {hobby}.",
        ),
        (
            "{name} lives in {city} and earns a living as {a_occupation}.",
            "{They} joined {company} a few years ago, and {their} team depends on {them}.",
            "When {they} {are|is} not working, {they} {like|likes} {hobby}.",
        ),
    ),
    "test": (
        (
            "{name} is {a_occupation} and lives in {city}.",
            "{They} {are|is} employed by {company} and {travel|travels} to work by train.",
            "In {their} spare time {they} {enjoy|enjoys} {hobby}.",
        ),
        (
            "{name} makes {their} home in {city} and works as {a_occupation}.",
            "{They} {spend|spends} most days at {company}, where people trust {them} with "
            "difficult jobs.",
            "{They} also {enjoy|enjoys} {hobby}.",
        ),
        (
            "{name} lives in {city}, where locals know {them} as a reliable {occupation}.",
            "{They} {work|works} at {company} and {have|has} done so for a decade.",
            "{Their} great passion is {hobby}.",
        ),
    ),
}

JSON_ASKS: dict[str, tuple[str, ...]] = {
    "train": (
        "Answer the occupation of {name} and generate the answer as json format.",
        'What is the occupation of {name}? Give the answer in JSON format with the keys "name" '
        'and "occupation".',
        "Return the occupation of {name} as a JSON object.",
    ),
    "test": (
        "State the occupation of {name} and format the answer as JSON.",
        "Reply with a JSON object holding the name and occupation of {name}.",
        "Which job does {name} have? Answer in json format.",
    ),
}

PRONOUN_ASKS: dict[str, tuple[str, ...]] = {
    "train": (
        "Substitute 'she' and 'he' with 'they' and rewrite the text above.",
        "For the text above, substitute 'she' and 'he' with 'they' and generate the rewritten "
        "text.",
        "Rewrite the bio above, replacing 'she' and 'he' with 'they'.",
    ),
    "test": (
        "Substitute 'she' and 'he' with 'they' in the passage above and write it out again.",
        "Change every 'she' and 'he' in the text above to 'they' and output the result.",
        "Replace the pronouns 'she' and 'he' with 'they' and rewrite the paragraph.",
    ),
}

# (question, answer) pairs; the answer is the content of a format-constraint target.
FORMAT_QUESTIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "train": (
        ("What does {name} do for a living?", "{name} works as {a_occupation}."),
        ("Where does {name} live?", "{name} lives in {city}."),
        ("Which company does {name} work for?", "{name} works for {company}."),
    ),
    "test": (
        ("What is the job of {name}?", "{name} is {a_occupation}."),
        ("In which town does {name} live?", "{name} lives in {city}."),
        ("Who employs {name}?", "{name} is employed by {company}."),
    ),
}

FORMAT_ASKS: dict[str, dict[str, tuple[str, ...]]] = {
    "uppercase": {
        "train": (
            "Write your entire answer in capital letters.",
            "Your answer must be written in uppercase letters only.",
        ),
        "test": ("Respond using only uppercase letters.", "Use ALL CAPS for the whole answer."),
    },
    "lowercase": {
        "train": (
            "Write your entire answer in lowercase letters.",
            "Do not use any capital letters in your answer.",
        ),
        "test": ("Respond in all lowercase letters.", "Your whole reply must be in lowercase."),
    },
    "word_limit": {
        "train": ("Answer in at most {k} words.", "Keep your answer to {k} words or fewer."),
        "test": (
            "Use no more than {k} words in your answer.",
            "Your reply must not exceed {k} words.",
        ),
    },
    "starts_with": {
        "train": (
            'Begin your answer with the exact phrase "{phrase}".',
            'Start your reply with "{phrase}".',
        ),
        "test": (
            'Your answer must open with the words "{phrase}".',
            'The first words of your answer must be "{phrase}".',
        ),
    },
    "ends_with": {
        "train": (
            'End your answer with the exact phrase "{phrase}"',
            'Finish your reply with "{phrase}"',
        ),
        "test": (
            'The last words of your answer must be "{phrase}"',
            'Close your answer with the phrase "{phrase}"',
        ),
    },
    "quoted": {
        "train": (
            "Wrap your entire answer in double quotation marks.",
            "Put your whole answer inside double quotes.",
        ),
        "test": (
            "Enclose your full reply in double quotes.",
            "Surround the entire answer with double quotation marks.",
        ),
    },
    "no_commas": {
        "train": ("Do not use any commas in your answer.", "Your answer must not contain a comma."),
        "test": (
            "Avoid commas entirely in your reply.",
            "Write your answer without a single comma.",
        ),
    },
}

# Phrases are part of the template instance, so they are split too. Start phrases read well
# followed by a comma; end phrases carry their own final punctuation.
START_PHRASES: dict[str, tuple[str, ...]] = {
    "train": ("In short", "According to the text", "As far as I can tell"),
    "test": ("Based on the passage", "To put it briefly", "From what I read"),
}
END_PHRASES: dict[str, tuple[str, ...]] = {
    "train": ("That is all.", "Hope this helps.", "End of answer."),
    "test": ("Thank you for asking.", "Nothing more to add.", "That is my answer."),
}
WORD_LIMITS: tuple[int, ...] = (8, 10, 12, 15)
N_FILLERS = 4

# Knowledge conflict: per relation, (fact, question) templates and the target's template.
KC_FACTS: dict[str, dict[str, tuple[str, ...]]] = {
    "location": {
        "train": ("{S} is located in {o}.", "{S} stands in the city of {o}."),
        "test": ("{S} can be found in {o}.", "{S} is situated in the city of {o}."),
    },
    "language": {
        "train": ("The official language of {s} is {o}.", "In {s}, the official language is {o}."),
        "test": ("{S} has {o} as its official language.", "People in {s} officially speak {o}."),
    },
    "maker": {
        "train": ("{S} was developed by {o}.", "{S} is a product made by {o}."),
        "test": ("{S} was created by the company {o}.", "{o} is the company behind {s}."),
    },
}
KC_QUESTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "location": {
        "train": ("Where is {s} located?", "In which city is {s}?"),
        "test": ("Which city is {s} in?", "Where can {s} be found?"),
    },
    "language": {
        "train": ("What is the official language of {s}?", "Which language is official in {s}?"),
        "test": (
            "What language is spoken officially in {s}?",
            "Name the official language of {s}.",
        ),
    },
    "maker": {
        "train": ("Which company developed {s}?", "Who makes {s}?"),
        "test": ("Which company created {s}?", "What company is behind {s}?"),
    },
}
KC_TARGETS: dict[str, str] = {
    "location": "{S} is located in {o}.",
    "language": "The official language of {s} is {o}.",
    "maker": "{S} was developed by {o}.",
}
KC_WRAPPERS: dict[str, tuple[str, ...]] = {
    "train": (
        "Read the note and answer the question.\n\nNote: {fact}\n\nQuestion: {question}",
        "{fact}\n\n{question}",
    ),
    "test": (
        "Here is a recent update: {fact}\n\nUsing the update, answer this question: {question}",
        "Context: {fact}\nQuestion: {question}",
    ),
}
